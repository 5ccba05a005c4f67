"""variables: which MODSTREAM_* names mean something, and the name a typo meant."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from consumer.settings import Settings
from consumer.settings.variables import (
    OTHER_NAMES,
    describe_unknown,
    settings_variables,
    unknown_variables,
)

KNOWN = settings_variables(Settings)

names = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=30)
prefixed = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["MODSTREAM_", "modstream_", "Modstream_"]),
    names,
)
candidates = st.one_of(prefixed, names, st.sampled_from(sorted(KNOWN | OTHER_NAMES)))


def test_every_field_and_its_modstream_alias_is_known() -> None:
    assert "MODSTREAM_CONCURRENCY" in KNOWN
    assert "MODSTREAM_OPENAI_API_KEY" in KNOWN  # the MODSTREAM_ spelling of an SDK alias
    assert "OPENAI_API_KEY" not in KNOWN  # not ours to police
    assert len(KNOWN) >= len(Settings.model_fields)


@given(st.lists(candidates, max_size=12))
def test_unknown_is_exactly_the_prefixed_names_nothing_reads(env_names: list[str]) -> None:
    environ = dict.fromkeys(env_names, "x")
    unknown = unknown_variables(environ, KNOWN)
    assert unknown == sorted(unknown)
    for name in environ:
        upper = name.upper()
        meant = (
            not upper.startswith("MODSTREAM_")
            or upper in KNOWN
            or upper in OTHER_NAMES
            or upper.startswith(("MODSTREAM_FAKE_", "MODSTREAM_TEST_"))
        )
        assert (name in unknown) is not meant


@given(st.sampled_from(sorted(KNOWN)), st.sampled_from(["lower", "upper", "title"]))
def test_a_known_name_in_any_case_is_never_unknown(name: str, case: str) -> None:
    assert unknown_variables({getattr(name, case)(): "1"}, KNOWN) == []


@given(st.sampled_from(sorted(n for n in KNOWN if len(n) > len("MODSTREAM_") + 6)), st.data())
def test_one_letter_dropped_suggests_a_valid_name(name: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(len("MODSTREAM_"), len(name) - 1))
    typo = name[:at] + name[at + 1 :]
    if typo in KNOWN:  # dropping a letter made another real name
        return
    line = describe_unknown(typo, KNOWN)
    assert line.startswith(f"{typo}: unknown variable (did you mean MODSTREAM_")
    suggested = line.split("did you mean ")[1].rstrip("?)")
    assert suggested in KNOWN


def test_a_name_like_none_gets_no_guess() -> None:
    assert describe_unknown("MODSTREAM_XYZZY", KNOWN) == "MODSTREAM_XYZZY: unknown variable"
