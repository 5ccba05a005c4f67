"""errors: every error class names a kind of its own, and a ValidationError is put in words
once, the same way for settings, the fake's knobs and any other model."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

import consumer.errors
from consumer.errors import ModstreamError, PermanentError, describe_validation_error


def _tree(cls: type[ModstreamError]) -> list[type[ModstreamError]]:
    return [cls, *(d for sub in cls.__subclasses__() for d in _tree(sub))]


def test_every_error_has_a_kind_of_its_own() -> None:
    errors = _tree(ModstreamError)
    kinds = [e.kind for e in errors]
    assert len(errors) > 15
    assert len(set(kinds)) == len(kinds)
    # Each is named in the module's table of the tree.
    doc = consumer.errors.__doc__ or ""
    assert all(e.__name__ in doc for e in errors)


def test_a_new_error_must_name_its_kind_and_a_new_one() -> None:
    with pytest.raises(TypeError):

        class Unnamed(PermanentError):  # type: ignore[call-arg]
            """No kind: it would be counted as 'permanent' unnoticed."""

    with pytest.raises(TypeError, match="decode"):

        class Twin(PermanentError, kind="decode"):
            """The kind of DecodeError."""


class Knobs(BaseModel):
    rate: int = Field(gt=0)
    inner: dict[str, int] = {}
    key: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _consistent(self) -> Knobs:
        if self.rate == 7:
            raise ValueError("seven is not a rate")
        return self


def _error(**values: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Knobs(**values)
    return caught.value


def test_describes_each_error_by_its_location_without_the_input_by_default() -> None:
    exc = _error(rate=0, inner={"a": "x"})
    assert describe_validation_error(exc) == (
        "rate: Input should be greater than 0; inner.a: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_names_echo_most_and_sep_are_the_callers() -> None:
    exc = _error(rate=0, inner={"a": "x"}, key=3)
    text = describe_validation_error(
        exc,
        name=str.upper,
        echo=lambda loc, given: loc != "key",
        most=2,
        sep="\n",
    )
    assert text.splitlines() == [
        "RATE: Input should be greater than 0 (got 0)",
        "INNER.A: Input should be a valid integer, unable to parse string as an integer (got 'x')",
    ]


def test_an_error_with_no_location_is_named_as_the_whole_without_pydantics_prefix() -> None:
    exc = _error(rate=7)
    assert describe_validation_error(exc, whole="knobs") == "knobs: seven is not a rate"
    assert describe_validation_error(exc) == "value: seven is not a rate"
    # A check that names its own variables is told as it is.
    assert describe_validation_error(exc, whole="") == "seven is not a rate"


def test_first_fatal_finds_the_fatal_error_a_task_group_wrapped() -> None:
    fatal = consumer.errors.FatalError("key rejected")
    nested = ExceptionGroup("outer", [ValueError("other"), ExceptionGroup("inner", [fatal])])
    assert consumer.errors.first_fatal(nested) is fatal
    transient = ExceptionGroup("g", [consumer.errors.TransientError("timeout"), ValueError()])
    assert consumer.errors.first_fatal(transient) is None


class Listing(BaseModel):
    items: Annotated[tuple[Knobs, ...], Field(min_length=1)]


def test_a_bad_item_is_told_once_not_also_as_a_collection_too_short() -> None:
    with pytest.raises(ValidationError) as one_bad:
        Listing(items=({"rate": 0},))
    assert describe_validation_error(one_bad.value) == (
        "items.0.rate: Input should be greater than 0"
    )
    with pytest.raises(ValidationError) as empty:
        Listing(items=())
    assert describe_validation_error(empty.value) == (
        "items: Tuple should have at least 1 item after validation, not 0"
    )
