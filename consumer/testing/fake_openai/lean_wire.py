"""HTTP/1.1 as bytes for benchmark mode's server: a request read from a buffer, an answer
written as a response. No I/O here: :mod:`.lean_http` feeds in what arrived and writes out
what comes back.

:func:`read_request` reads requests with a ``Content-Length`` body (or none), split over any
number of reads, and says whether the connection is kept (HTTP/1.1's default; ``Connection:
close`` honoured, HTTP/1.0 closes unless it asks for keep-alive) and whether the client waits
for ``100 Continue``. What it refuses (the server answers with the error and closes): a
malformed request line or header (400), a ``Transfer-Encoding`` body (411: send a
Content-Length), a head over :data:`MAX_HEAD` (431), a body over :data:`MAX_BODY` (413).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

#: Largest request head (request line and headers) accepted, in bytes.
MAX_HEAD = 64 * 1024
#: Largest request body accepted, in bytes: the aiohttp app's limit (batch prompts are large).
MAX_BODY = 64 * 1024 * 1024

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {text}\r\n".encode() for code, text in REASONS.items()}
JSON = b"application/json"


@dataclass(slots=True)
class Answer:
    """What the HTTP layer sends: status, extra header lines, body, after ``delay`` seconds."""

    status: int
    body: bytes
    headers: bytes = b""
    delay: float = 0.0
    content_type: bytes = JSON


def header_lines(headers: dict[str, str]) -> bytes:
    """``name: value\\r\\n`` lines for a response head."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


def response(answer: Answer, *, close: bool) -> bytes:
    """The bytes of one response."""
    status = _STATUS_LINES.get(answer.status) or f"HTTP/1.1 {answer.status} Status\r\n".encode()
    return b"".join(
        (
            status,
            b"Content-Type: ",
            answer.content_type,
            b"\r\nContent-Length: ",
            str(len(answer.body)).encode(),
            b"\r\n",
            answer.headers,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            answer.body,
        )
    )


@dataclass(slots=True)
class Request:
    """One whole request, and where the next one starts in the buffer."""

    method: str
    path: str
    query: str
    headers: dict[bytes, bytes]
    body: bytes
    #: The connection closes after the answer.
    close: bool
    end: int


class Refused(NamedTuple):
    """A request that cannot be read: answer ``status`` with ``message``, then close."""

    status: int
    message: str


class Incomplete(NamedTuple):
    """More bytes are needed; ``expects_continue``: the client waits for ``100 Continue``."""

    expects_continue: bool = False


def read_request(buffer: bytes | bytearray, start: int) -> Request | Refused | Incomplete:
    """The request at ``start`` of ``buffer``, if it is all there."""
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buffer) - start > MAX_HEAD:
            return Refused(431, "The request head is too large.")
        return Incomplete()
    if end - start > MAX_HEAD:
        return Refused(431, "The request head is too large.")
    lines = bytes(buffer[start:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1]:
        return Refused(400, "Malformed request line.")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            return Refused(400, "Malformed header line.")
        key = name.lower()
        value = value.strip()
        if key in headers and key == b"content-length" and headers[key] != value:
            return Refused(400, "Conflicting Content-Length headers.")
        headers[key] = value
    if b"transfer-encoding" in headers:
        return Refused(411, "Send the body with a Content-Length, not a Transfer-Encoding.")
    raw_length = headers.get(b"content-length", b"0")
    if not raw_length.isdigit():
        return Refused(400, "Invalid Content-Length.")
    length = int(raw_length)
    if length > MAX_BODY:
        return Refused(413, f"The request body is larger than {MAX_BODY} bytes.")
    body_start = end + 4
    if len(buffer) - body_start < length:
        return Incomplete(headers.get(b"expect", b"").lower() == b"100-continue")
    connection = headers.get(b"connection", b"").lower()
    kept = parts[2] == b"HTTP/1.1"  # by default; HTTP/1.0 closes unless asked not to
    close = b"close" in connection if kept else b"keep-alive" not in connection
    target = parts[1].decode("latin-1")
    path, _, query = target.partition("?")
    return Request(
        parts[0].decode("latin-1"),
        path,
        query,
        headers,
        bytes(buffer[body_start : body_start + length]),
        close,
        body_start + length,
    )
