"""The Files and Batches routes of the aiohttp app, in OpenAI's shapes (:func:`add`).

POST   /v1/files                   multipart ``file`` + ``purpose``: a FileObject
GET    /v1/files                   {"object": "list", "data": [...]}, newest first
GET    /v1/files/{id}              the FileObject
GET    /v1/files/{id}/content      the file's bytes
DELETE /v1/files/{id}              {"id", "object": "file", "deleted": true}
POST   /v1/batches                 {input_file_id, endpoint, completion_window, metadata}
GET    /v1/batches?after=&limit=   a page of batches, newest first
GET    /v1/batches/{id}            the Batch, its status as of now (see batches.py)
POST   /v1/batches/{id}/cancel     cancelling; 409 for a batch that has finished

The key and the outage switch apply, as to every ``/v1`` request; random faults do not (they
are drawn per batch line instead, see ``Endpoints.answer``). Benchmark mode serves none of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from consumer.testing.fake_openai import batch_input
from consumer.testing.fake_openai.batches import Answer
from consumer.testing.fake_openai.faults import Fail, Outcome
from consumer.testing.fake_openai.state import json_response

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from consumer.testing.fake_openai.batches import Batch
    from consumer.testing.fake_openai.files import StoredFile
    from consumer.testing.fake_openai.state import FakeState

#: The purposes a FileObject may have (openai-python's ``FileObject.purpose``).
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})


def _not_found(kind: str, object_id: str) -> Fail:
    fail = Fail(
        404, Outcome.NOT_FOUND, f"No such {kind} object: {object_id}", "invalid_request_error"
    )
    fail.param = "id"
    return fail


def _invalid(param: str, message: str) -> Fail:
    fail = Fail.bad_request(message)
    fail.param = param
    return fail


class BatchRoutes:
    """The handlers over one :class:`FakeState`; ``answer`` runs one batch line."""

    def __init__(self, state: FakeState, answer: Answer) -> None:
        self.state = state
        self.answer = answer

    def _file(self, request: web.Request) -> StoredFile:
        file_id = request.match_info["file_id"]
        stored = self.state.files.get(file_id)
        if stored is None:
            raise _not_found("File", file_id)
        return stored

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /v1/files``."""
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        content = upload.file.read() if isinstance(upload, web.FileField) else None
        filename = upload.filename if isinstance(upload, web.FileField) else "upload"
        # The log keeps what was sent, not the file (a batch input can be megabytes).
        summary = {"purpose": purpose, "filename": filename, "bytes": len(content or b"")}
        self.state.check(request, summary)
        if content is None:
            raise _invalid("file", "Missing required parameter: 'file' (a multipart file).")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise _invalid("purpose", f"Invalid purpose {purpose!r}: one of {sorted(PURPOSES)}.")
        stored = self.state.files.add(content, filename=filename, purpose=purpose)
        self.state.stats.file_uploaded()
        return json_response(stored.document())

    async def list_files(self, request: web.Request) -> web.Response:
        """``GET /v1/files`` (``purpose`` filters; one page holds every file)."""
        await self.state.enter(request)
        purpose = request.query.get("purpose")
        data = [
            f.document()
            for f in reversed(self.state.files.files.values())
            if purpose is None or f.purpose == purpose
        ]
        return json_response({"object": "list", "data": data, "has_more": False})

    async def get_file(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{file_id}``."""
        await self.state.enter(request)
        return json_response(self._file(request).document())

    async def content(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{file_id}/content``: the bytes as uploaded or written."""
        await self.state.enter(request)
        stored = self._file(request)
        return web.Response(body=stored.content, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        """``DELETE /v1/files/{file_id}``."""
        await self.state.enter(request)
        stored = self._file(request)
        self.state.files.delete(stored.id)
        return json_response({"id": stored.id, "object": "file", "deleted": True})

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/batches``: validated and answered now, revealed by the clock."""
        state = self.state
        body = await state.enter(request)
        endpoint, window = body.get("endpoint"), body.get("completion_window")
        if endpoint not in batch_input.ENDPOINTS:
            raise _invalid(
                "endpoint",
                f"Invalid endpoint {endpoint!r}: the fake batches "
                f"{', '.join(sorted(batch_input.ENDPOINTS))}.",
            )
        if window != "24h":
            raise _invalid("completion_window", f"Invalid completion_window {window!r}: '24h'.")
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise _invalid("metadata", "metadata must be an object of strings.")
        file_id = body.get("input_file_id")
        stored = state.files.get(file_id) if isinstance(file_id, str) else None
        if stored is None:
            raise _invalid("input_file_id", f"Invalid 'input_file_id': no file {file_id!r}.")
        if stored.purpose != "batch":
            raise _invalid(
                "input_file_id",
                f"The input file {stored.id} has purpose {stored.purpose!r}, not 'batch'.",
            )
        batch = state.batches.create(
            batch_input.parse(stored.content, endpoint),
            input_file_id=stored.id,
            endpoint=endpoint,
            completion_window=window,
            metadata=metadata,
            seed=state.config.seed,
            answer=self.answer,
        )
        state.stats.batch_created()
        return json_response(batch.document())

    async def get_batch(self, request: web.Request) -> web.Response:
        """``GET /v1/batches/{batch_id}``."""
        await self.state.enter(request)
        return json_response(self._batch(request).document())

    def _batch(self, request: web.Request) -> Batch:
        batch_id = request.match_info["batch_id"]
        batch = self.state.batches.get(batch_id, self.state.config.batch_delay_s)
        if batch is None:
            raise _not_found("Batch", batch_id)
        return batch

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/batches/{batch_id}/cancel``."""
        state = self.state
        await request.read()  # the SDK sends no body
        state.check(request, None)
        batch = self._batch(request)
        if not state.batches.cancel(batch, state.config.batch_delay_s):
            message = f"Cannot cancel a batch with status '{batch.status}'."
            raise Fail(409, Outcome.CONFLICT, message, "invalid_request_error")
        return json_response(batch.document())

    async def list_batches(self, request: web.Request) -> web.Response:
        """``GET /v1/batches``: newest first, ``limit`` (1 to 100, default 20) after ``after``."""
        state = self.state
        await state.enter(request)
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise _invalid("limit", "limit must be an integer from 1 to 100.")
        chosen, more = state.batches.page(
            request.query.get("after"), limit, state.config.batch_delay_s
        )
        data = [batch.document() for batch in chosen]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )


def add(app: web.Application, state: FakeState, answer: Answer) -> None:
    """Register the Files and Batches routes for ``state`` on ``app``."""
    routes = BatchRoutes(state, answer)

    def guarded(
        handler: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                response = await handler(request)
            except Fail as fail:
                return state.failed(fail)
            state.stats.outcome(Outcome.OK)
            return response

        return handle

    app.router.add_post("/v1/files", guarded(routes.upload))
    app.router.add_get("/v1/files", guarded(routes.list_files))
    app.router.add_get("/v1/files/{file_id}", guarded(routes.get_file))
    app.router.add_delete("/v1/files/{file_id}", guarded(routes.delete_file))
    app.router.add_get("/v1/files/{file_id}/content", guarded(routes.content))
    app.router.add_post("/v1/batches", guarded(routes.create))
    app.router.add_get("/v1/batches", guarded(routes.list_batches))
    app.router.add_get("/v1/batches/{batch_id}", guarded(routes.get_batch))
    app.router.add_post("/v1/batches/{batch_id}/cancel", guarded(routes.cancel))
