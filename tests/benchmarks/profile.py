"""Read a pyinstrument session of modstream and say where its event loop spends its time.

pyinstrument's command line samples real stacks (``async_mode="disabled"``): a sample is either
in ``epoll.poll`` (idle, waiting for I/O) or in the code that runs. Start-up (imports, loading
the tiktoken BPE) is set apart, so the shares below are of the steady-state busy time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinstrument.renderers import ConsoleRenderer
from pyinstrument.session import Session

#: Functions whose inclusive time is worth naming (outermost call only, no double counting).
#: (label, function name, a substring of its file path)
CALL_OUTS: tuple[tuple[str, str, str], ...] = (
    ("classify: one model call (sender.create, either path)", "create", "consumer/chat_client"),
    ("chat_client: parse the reply (Completion)", "parse", "consumer/chat_client"),
    ("chat_client: request body (orjson)", "body", "consumer/chat_client"),
    ("aiohttp client: request and response", "_request", "aiohttp/client"),
    ("openai: one chat.completions call (whole SDK path)", "wrapped", "openai/_legacy_response"),
    ("openai: request params transform", "async_maybe_transform", "openai/_utils/_transform"),
    ("openai: build httpx request", "_build_request", "openai/_base_client"),
    ("httpx2/httpcore2: send and receive", "send", "httpx2/_client"),
    ("openai: parse the response", "parse", "openai/_legacy_response"),
    ("classify: usage event (incl. price)", "_usage", "consumer/classify"),
    ("cost: genai_prices calc_price", "cost", "consumer/cost"),
    ("classify: verdict construction", "_verdict", "consumer/classify"),
    ("classify: validate reply (pydantic)", "model_validate_json", "pydantic/main"),
    ("publish: serialise + producer.send", "publish", "consumer/publish"),
    ("pipeline: tenacity around publish", "__anext__", "tenacity/asyncio"),
    ("limit: slot (concurrency + buckets)", "slot", "consumer/limit"),
    ("source: fetch + Envelope", "fetch", "consumer/source"),
    ("decode", "decode", "consumer/decode"),
    ("admit (tiktoken count)", "admit", "consumer/admit"),
    ("offsets: commit", "commit", "consumer/pipeline"),
    ("structlog", "", "structlog/"),
    ("aiokafka producer (sender loop, batches)", "", "aiokafka/producer"),
    ("aiokafka consumer (fetcher)", "", "aiokafka/consumer"),
)


@dataclass
class Profile:
    """What the session says, in seconds."""

    duration: float
    cpu_time: float
    idle: float
    startup: float
    busy: float  # steady-state busy = duration - idle - startup
    self_by_function: Counter[str] = field(default_factory=Counter)
    self_by_library: Counter[str] = field(default_factory=Counter)
    call_outs: dict[str, float] = field(default_factory=dict)
    text: str = ""

    def top_functions(self, n: int = 12) -> list[tuple[str, float]]:
        return [(name, float(t)) for name, t in self.self_by_function.most_common(n)]

    def top_libraries(self, n: int = 10) -> list[tuple[str, float]]:
        return [(name, float(t)) for name, t in self.self_by_library.most_common(n)]


def _library(path: str) -> str:
    """The top-level package a file belongs to (``site-packages/openai/x.py`` -> openai)."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/consumer/" in path or "/schemas/" in path:
        return "modstream (" + ("consumer" if "/consumer/" in path else "schemas") + ")"
    if path.startswith("<"):
        return "built-ins (C calls)"
    if "/lib/python3" in path:
        return "stdlib: " + path.rsplit("/lib/python3", 1)[1].split("/", 2)[1].removesuffix(".py")
    return path


def _is_startup(frame: Any) -> bool:
    path = frame.file_path or ""
    if frame.function == "<module>":
        return not (path.endswith("consumer/__main__.py") or path == "<string>")
    return frame.function == "get_encoding" and "tiktoken" in path


def _is_idle(frame: Any) -> bool:
    return frame.function in ("poll", "epoll.poll", "select") and (
        frame.file_path or ""
    ).startswith("<")


def analyse(path: Path) -> Profile:
    """Aggregate a ``.pyisession`` file."""
    session = Session.load(path)
    root = session.root_frame()
    profile = Profile(session.duration, session.cpu_time, 0.0, 0.0, 0.0)
    if root is None:
        return profile
    open_calls: Counter[str] = Counter()

    def visit(frame: Any) -> None:
        if _is_startup(frame):
            profile.startup += frame.time
            return
        path = frame.file_path or ""
        label = None
        for name, function, where in CALL_OUTS:
            if (not function or frame.function == function) and where in path:
                label = name
                break
        if label is not None and open_calls[label] == 0:
            profile.call_outs[label] = profile.call_outs.get(label, 0.0) + frame.time
        if label is not None:
            open_calls[label] += 1
        children = [c for c in frame.children if not c.is_synthetic]
        own = frame.time - sum(c.time for c in children)
        if _is_idle(frame):
            profile.idle += frame.time
        elif own > 0:
            where = frame.file_path_short or path
            profile.self_by_function[f"{frame.function}  ({where}:{frame.line_no})"] += own
            profile.self_by_library[_library(path)] += own
        for child in children:
            visit(child)
        if label is not None:
            open_calls[label] -= 1

    visit(root)
    profile.busy = max(1e-9, profile.duration - profile.idle - profile.startup)
    profile.text = ConsoleRenderer(
        unicode=False,
        color=False,
        processor_options={"filter_threshold": 0.005},
    ).render(session)
    return profile
