"""consumer.kafka.topics: a missing topic and a refused creation, each in one line."""

from __future__ import annotations

from consumer.kafka.topics import CREATE_HINT, Creation, missing_topics


def test_no_error_when_every_topic_exists() -> None:
    assert missing_topics({"MODSTREAM_INPUT_TOPIC": "in"}, {"in", "other"}) is None


def test_one_missing_topic_is_named_with_what_named_it_and_the_hint() -> None:
    problem = missing_topics({"MODSTREAM_INPUT_TOPIC": "in", "--usage": "u"}, {"u"})
    assert problem is not None
    assert problem.message == (
        "topic does not exist: in (MODSTREAM_INPUT_TOPIC); create it with `modstream topics`"
    )
    assert problem.exit_code == 2


def test_several_missing_topics_are_listed_in_order_and_the_hint_made_plural() -> None:
    problem = missing_topics({"A": "a", "B": "b", "C": "c"}, {"b"}, hint=CREATE_HINT)
    assert problem is not None
    assert problem.message == (
        "topics do not exist: a (A), c (C); create them with `modstream topics`"
    )


def test_a_creation_without_refusals_is_no_error() -> None:
    assert Creation(created=["a"], existed=["b"]).error() is None


def test_refusals_are_grouped_by_reason() -> None:
    done = Creation(
        created=["ok"],
        failed={"a": "INVALID_REPLICATION_FACTOR (3 > 1)", "b": "INVALID_TOPIC (bad)"}
        | {"c": "INVALID_REPLICATION_FACTOR (3 > 1)"},
    )
    problem = done.error()
    assert problem is not None
    assert problem.message == (
        "Kafka refused to create a, c: INVALID_REPLICATION_FACTOR (3 > 1); b: INVALID_TOPIC (bad)"
    )
    assert "ok" not in problem.message
