"""Offline token counting: tiktoken with the BPE files that ship inside modstream.

tiktoken downloads its BPE files on first use; production hosts often have no route to the
internet. The o200k_base and cl100k_base files ship gzipped in ``consumer/data/tiktoken``; on
first use they are unpacked into a private cache under the name tiktoken looks for (the sha1 of
the download URL), checked against their published sha256, and tiktoken loads them from there
without touching the network.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path

import tiktoken

from consumer.errors import ConfigError
from consumer.model.messages import Message, text_of

_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"

#: Published sha256 of each shipped file (the same values tiktoken checks).
SHIPPED: dict[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

DEFAULT_ENCODING = "o200k_base"


def _cache_dir() -> Path:
    return Path(
        os.environ.get("MODSTREAM_TIKTOKEN_CACHE")
        or Path(tempfile.gettempdir()) / f"modstream-tiktoken-{os.getuid()}"
    )


def _install(name: str, cache: Path) -> None:
    """Unpack the shipped file for ``name`` into ``cache`` if it is not already there."""
    target = cache / hashlib.sha1(_URL.format(name=name).encode()).hexdigest()  # noqa: S324
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == SHIPPED[name]:
        return
    packed = resources.files("consumer") / "data" / "tiktoken" / f"{name}.tiktoken.gz"
    data = gzip.decompress(packed.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHIPPED[name]:
        raise ConfigError(f"shipped tokenizer file {name} is corrupt (sha256 {digest})")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: concurrent processes never see a half-written file


@functools.cache
def encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """The tiktoken encoding ``name``, loaded from the shipped files with no network."""
    if name not in SHIPPED:
        raise ConfigError(f"encoding {name!r} is not shipped; choose one of {sorted(SHIPPED)}")
    cache = _cache_dir()
    _install(name, cache)
    # tiktoken reads TIKTOKEN_CACHE_DIR at load time; point it at our cache for this load only.
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding(name)
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding a model uses; unknown names (vLLM, Ollama, new models) fall back to o200k."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = DEFAULT_ENCODING
    return encoding(name if name in SHIPPED else DEFAULT_ENCODING)


def count_tokens(text: str, model: str) -> int:
    """Number of tokens ``text`` takes for ``model`` (special-token text counted as plain text)."""
    return len(encoding_for_model(model).encode(text, disallowed_special=()))


#: OpenAI's published recipe for chat prompts: per message 3 tokens plus role and content,
#: plus 3 that prime the reply (the response_format schema is counted by the provider in an
#: undocumented way and is not included).
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3


def chat_prompt_tokens(messages: list[Message], model: str) -> int:
    """Prompt tokens a provider reports for chat ``messages``, their text parts only (the
    caller adds an image's tokens: :mod:`consumer.model.image_tokens`)."""
    return REPLY_PRIMING + sum(
        TOKENS_PER_MESSAGE
        + count_tokens(m.get("role", ""), model)
        + count_tokens(text_of(m), model)
        for m in messages
    )
