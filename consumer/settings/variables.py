"""Which ``MODSTREAM_*`` environment variables mean something, and the name a typo meant.

pydantic-settings ignores a variable it has no field for, so ``MODSTREAM_CONCURENCY=5`` would
start a consumer at the default concurrency and say nothing; and a misspelt
``MODSTREAM_DELIVERY`` would quietly run at-least-once. :func:`unknown_variables` finds such
names so :func:`~consumer.settings.load_settings` can refuse them, with the closest valid name.

A few ``MODSTREAM_*`` variables are read by other parts than the settings and are known too:
the fake server's knobs (``MODSTREAM_FAKE_*``), the test suite's (``MODSTREAM_TEST_*``), the
tokenizer cache and what the worker supervisor hands its workers.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from pydantic_settings import BaseSettings

PREFIX = "MODSTREAM_"

# Read outside the settings model: by the fake server, the tests, tokens.py and ops/workers.py.
OTHER_PREFIXES = ("MODSTREAM_FAKE_", "MODSTREAM_TEST_")
OTHER_NAMES = frozenset(
    {"MODSTREAM_TIKTOKEN_CACHE", "MODSTREAM_WORKER_INDEX", "MODSTREAM_WORKER_REPORT_FD"}
)


def settings_variables(model: type[BaseSettings]) -> frozenset[str]:
    """Every ``MODSTREAM_*`` name ``model`` reads, upper-cased (fields and their aliases)."""
    names = set()
    for field_name, field in model.model_fields.items():
        names.add(PREFIX + field_name.upper())
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias] if alias is not None else [])
        names.update(str(choice).upper() for choice in choices)
    return frozenset(name for name in names if name.startswith(PREFIX))


def unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """The ``MODSTREAM_*`` names in ``environ`` that nothing reads, sorted, as spelt there.

    Names are compared upper-cased, because the settings read them case-insensitively.
    """
    valid = frozenset(known) | OTHER_NAMES
    return sorted(
        name
        for name in environ
        if (upper := name.upper()).startswith(PREFIX)
        and upper not in valid
        and not upper.startswith(OTHER_PREFIXES)
    )


def describe_unknown(name: str, known: Iterable[str]) -> str:
    """One line for an unknown variable, with the closest valid name when one is close."""
    # Compared without the prefix, which every candidate shares and would make all look close.
    suffixes = sorted(valid.removeprefix(PREFIX) for valid in known)
    close = difflib.get_close_matches(name.upper().removeprefix(PREFIX), suffixes, n=1)
    hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ""
    return f"{name}: unknown variable{hint}"


#: Said once after the unknown variables.
WHERE_LISTED = "the README's Configuration section lists every MODSTREAM_* setting"
