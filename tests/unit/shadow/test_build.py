"""build: the candidate's settings are production's with the shadow parts and budget share; its
outputs carry what production's do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from consumer.errors import ConfigError
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitted
from consumer.pipeline.source import Envelope
from consumer.settings import Settings, load_settings
from consumer.shadow.build import candidate_settings, candidate_stages, shadow_stage
from schemas import ModerationRequest
from tests.unit.kafka_fakes import FakeProducer, usage_for, verdict_for


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("MODSTREAM_", "OPENAI_")):
            monkeypatch.delenv(name)


def test_the_candidate_gets_its_model_files_and_a_share_of_every_budget(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.yaml"
    settings = Settings(
        concurrency=40,
        rpm=1000,
        tpm=90_000,
        batch_size=8,
        shadow_share=0.1,
        shadow_model="gpt-4.1-mini",
        shadow_prompt_file=prompt,
        shadow_budget_share=0.25,
    )
    candidate = candidate_settings(settings)
    assert candidate.model == "gpt-4.1-mini"
    assert candidate.prompt_file == prompt
    assert candidate.policy_file is None  # production's (the built-in one)
    assert (candidate.concurrency, candidate.rpm, candidate.tpm) == (10, 250, 22_500)
    assert candidate.batch_size == 1
    assert settings.concurrency == 40  # production's own are left alone


def test_a_tiny_budget_still_leaves_the_candidate_one_of_each() -> None:
    settings = Settings(concurrency=2, rpm=3, shadow_share=0.5, shadow_model="gpt-4o")
    candidate = candidate_settings(settings)
    assert (candidate.concurrency, candidate.rpm, candidate.tpm) == (1, 1, None)


def test_a_candidate_model_that_cannot_fit_names_the_shadow_variable() -> None:
    settings = Settings(context_window=4300, shadow_share=0.5, shadow_model="o3")
    with pytest.raises(ConfigError, match="MODSTREAM_SHADOW_MODEL=o3"):
        candidate_settings(settings)


def test_a_share_without_a_candidate_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODSTREAM_SHADOW_SHARE", "0.2")
    with pytest.raises(ConfigError, match=r"MODSTREAM_SHADOW_SHARE=0\.2 needs a candidate"):
        load_settings()


def test_the_shadow_topic_defaults_beside_the_verdicts_and_must_be_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODSTREAM_SHADOW_SHARE", "0.2")
    monkeypatch.setenv("MODSTREAM_SHADOW_MODEL", "gpt-4.1")
    assert load_settings().effective_shadow_topic == "moderation.verdicts.shadow"
    monkeypatch.setenv("MODSTREAM_SHADOW_TOPIC", "moderation.verdicts")
    with pytest.raises(ConfigError, match=r"MODSTREAM_SHADOW_TOPIC .* must differ"):
        load_settings()


def test_shadow_outputs_carry_the_input_headers_and_the_trace_context() -> None:
    settings = Settings(shadow_share=0.5, shadow_model="gpt-4o", carry_headers="tenant")
    client = AsyncOpenAI(api_key="sk-test-not-a-real-key", base_url="http://127.0.0.1:9/v1")
    candidate = candidate_stages(settings, client, None)

    def inject(headers: list[tuple[str, bytes]]) -> None:
        headers.append(("traceparent", b"the input span's"))

    shadow = shadow_stage(
        settings,
        candidate,
        FakeProducer(),
        production=candidate[0].limiter,
        metrics=Metrics(),
        inject=inject,
    )
    env = Envelope("in", 0, 3, b"k", b"{}", (("tenant", b"t1"), ("x", b"no")), 0)
    admitted = Admitted(ModerationRequest(id="m3", text="hi"), "hi", None, False, 1)
    records = shadow.candidate.publisher.records(
        env, verdict=verdict_for(admitted, env.source), usage=[usage_for(env.source, "m3")]
    )
    assert [r.topic for r in records] == [
        "moderation.verdicts.shadow",
        "moderation.verdicts.shadow.usage",
    ]
    for record in records:
        assert record.headers[3:] == [("tenant", b"t1"), ("traceparent", b"the input span's")]
