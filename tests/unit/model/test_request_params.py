"""The parameter table: the exact request body each model family gets, on each kind of server.

Bodies are captured with ``httpx2.MockTransport`` under the real client (``AsyncOpenAI``, or
``AsyncAzureOpenAI`` built by ``consumer.model.build.openai_client``), so what is checked is what
would go over the wire. Also: settings that cannot work with the model are configuration errors, the
response-format ladder, a reasoning model's ``length`` stop, and the table's invariants
(hypothesis).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer.errors import ConfigError, ProviderAuthError, RequestRejected
from consumer.model.build import openai_client
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable
from consumer.model.limit import Limiter
from consumer.model.reply_format import ReplyMode, ResponseFormats
from consumer.model.request_params import (
    EFFORTS,
    FAMILIES,
    Server,
    TokenParam,
    choose,
    family_for,
    server_kind,
)
from consumer.settings import Settings, load_settings
from schemas import UsageOutcome
from tests.unit.model.test_classify import BUILDER, POLICY, SOURCE, admitted, completion_body

pytestmark = pytest.mark.timeout(60)

AZURE = "https://modstream-test.openai.azure.com"
VLLM = "http://localhost:8000/v1"
OLLAMA = "http://localhost:11434/v1"
LLAMA_CPP = "http://127.0.0.1:8080/v1"


class Wire:
    """The provider end of the wire: answers 200 (or the scripted answers), keeps requests."""

    def __init__(self, *answers: httpx2.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)
        return httpx2.Response(200, json=completion_body())

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


Build = Callable[..., tuple[Classifier, Wire, Settings]]


@pytest_asyncio.fixture
async def build(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Build]:
    real_sleep = asyncio.sleep

    async def only_yield(delay: float, result: Any = None) -> Any:
        await real_sleep(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", only_yield)
    clients: list[httpx2.AsyncClient] = []

    def make(
        *answers: httpx2.Response, limiter: Limiter | None = None, **overrides: Any
    ) -> tuple[Classifier, Wire, Settings]:
        values: dict[str, Any] = {"openai_api_key": "sk-test"} | overrides
        settings = load_settings(**values)
        wire = Wire(*answers)
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(wire))
        clients.append(http)
        client = openai_client(settings, http)
        classifier = Classifier(
            client,
            model=settings.model,
            params=settings.request_params,
            formats=ResponseFormats(settings.response_format),
            builder=BUILDER,
            limiter=limiter or Limiter(4),
            prices=PriceTable("azure" if settings.server is Server.AZURE else "openai"),
            max_backoff_s=0.01,
        )
        return classifier, wire, settings

    yield make
    for http in clients:
        await http.aclose()


def parameters(body: dict[str, Any]) -> dict[str, Any]:
    """The body without the parts every family shares (messages, response_format)."""
    assert body["messages"] == BUILDER.messages("have a nice day", None)
    assert body["response_format"] == POLICY.response_format
    return {k: v for k, v in body.items() if k not in ("messages", "response_format")}


# The table, row by row: settings -> the exact parameters sent (MODSTREAM_MAX_TOKENS=400).
BODIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "gpt-4o on OpenAI": (
        {"model": "gpt-4o", "seed": 7},
        {"model": "gpt-4o", "max_completion_tokens": 400, "temperature": 0.0, "seed": 7},
    ),
    "gpt-4o-mini on OpenAI, no seed": (
        {"model": "gpt-4o-mini"},
        {"model": "gpt-4o-mini", "max_completion_tokens": 400, "temperature": 0.0},
    ),
    "gpt-4.1 on OpenAI": (
        {"model": "gpt-4.1", "temperature": 0.2},
        {"model": "gpt-4.1", "max_completion_tokens": 400, "temperature": 0.2},
    ),
    "gpt-4.1-mini through a proxy": (
        {"model": "gpt-4.1-mini", "openai_base_url": "http://litellm:4000/v1"},
        {"model": "gpt-4.1-mini", "max_completion_tokens": 400, "temperature": 0.0},
    ),
    "o4-mini": (
        {"model": "o4-mini", "seed": 7},
        {"model": "o4-mini", "max_completion_tokens": 400 + 4096, "reasoning_effort": "low"},
    ),
    "o3, medium effort": (
        {"model": "o3", "reasoning_effort": "medium"},
        {"model": "o3", "max_completion_tokens": 400 + 8192, "reasoning_effort": "medium"},
    ),
    "o1-mini takes no effort": (
        {"model": "o1-mini"},
        {"model": "o1-mini", "max_completion_tokens": 400 + 8192},
    ),
    "gpt-5": (
        {"model": "gpt-5", "temperature": 0.7, "seed": 7},
        {"model": "gpt-5", "max_completion_tokens": 400 + 1024, "reasoning_effort": "minimal"},
    ),
    "gpt-5-mini": (
        {"model": "gpt-5-mini"},
        {
            "model": "gpt-5-mini",
            "max_completion_tokens": 400 + 1024,
            "reasoning_effort": "minimal",
        },
    ),
    "gpt-5-nano, own reasoning budget": (
        {"model": "gpt-5-nano", "reasoning_budget_tokens": 600},
        {
            "model": "gpt-5-nano",
            "max_completion_tokens": 400 + 600,
            "reasoning_effort": "minimal",
        },
    ),
    "gpt-5.1: none is the lowest": (
        {"model": "gpt-5.1"},
        {"model": "gpt-5.1", "max_completion_tokens": 400, "reasoning_effort": "none"},
    ),
    "gpt-5.2": (
        {"model": "gpt-5.2", "reasoning_effort": "low"},
        {"model": "gpt-5.2", "max_completion_tokens": 400 + 4096, "reasoning_effort": "low"},
    ),
    "gpt-5-mini, effort off": (
        {"model": "gpt-5-mini", "reasoning_effort": "off"},
        {"model": "gpt-5-mini", "max_completion_tokens": 400 + 8192},
    ),
    "vLLM": (
        {"model": "meta-llama/Llama-3.1-8B-Instruct", "openai_base_url": VLLM, "seed": 7},
        {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "max_tokens": 400,
            "temperature": 0.0,
            "seed": 7,
        },
    ),
    "Ollama": (
        {"model": "llama3.1:8b", "openai_base_url": OLLAMA},
        {"model": "llama3.1:8b", "max_tokens": 400, "temperature": 0.0},
    ),
    "llama.cpp server": (
        {"model": "qwen2.5-7b-instruct", "openai_base_url": LLAMA_CPP},
        {"model": "qwen2.5-7b-instruct", "max_tokens": 400, "temperature": 0.0},
    ),
    "gpt-oss on Ollama": (
        {"model": "gpt-oss:20b", "openai_base_url": OLLAMA},
        {
            "model": "gpt-oss:20b",
            "max_tokens": 400 + 4096,
            "temperature": 0.0,
            "reasoning_effort": "low",
        },
    ),
    "vLLM, a served name of the gpt-5 family": (
        {"model": "moderator", "openai_base_url": VLLM, "model_family": "gpt-5"},
        {"model": "moderator", "max_completion_tokens": 400 + 1024, "reasoning_effort": "minimal"},
    ),
    "vLLM, max_completion_tokens by setting": (
        {
            "model": "Qwen/Qwen3-8B",
            "openai_base_url": VLLM,
            "token_limit_param": "max_completion_tokens",
            "reasoning_effort": "low",
        },
        {
            "model": "Qwen/Qwen3-8B",
            "max_completion_tokens": 400 + 4096,
            "temperature": 0.0,
            "reasoning_effort": "low",
        },
    ),
    "gpt-4o, max_tokens by setting": (
        {"model": "gpt-4o", "token_limit_param": "max_tokens"},
        {"model": "gpt-4o", "max_tokens": 400, "temperature": 0.0},
    ),
}


@pytest.mark.parametrize("case", list(BODIES))
async def test_the_body_each_family_gets(build: Build, case: str) -> None:
    settings, expected = BODIES[case]
    classifier, wire, _ = build(**settings)
    result = await classifier.classify(admitted(), SOURCE)
    assert result.verdict is not None
    assert len(wire.requests) == 1
    assert parameters(wire.bodies[0]) == expected


AZURE_BODIES: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "gpt-5-mini deployment": (
        {"model": "gpt-5-mini", "azure_deployment": "moderation-prod"},
        "moderation-prod",
        {
            "model": "gpt-5-mini",
            "max_completion_tokens": 400 + 1024,
            "reasoning_effort": "minimal",
        },
    ),
    "gpt-4o, deployment named as the model": (
        {"model": "gpt-4o", "seed": 3},
        "gpt-4o",
        {"model": "gpt-4o", "max_completion_tokens": 400, "temperature": 0.0, "seed": 3},
    ),
    "o4-mini": (
        {"model": "o4-mini", "azure_deployment": "reasoner"},
        "reasoner",
        {"model": "o4-mini", "max_completion_tokens": 400 + 4096, "reasoning_effort": "low"},
    ),
}


@pytest.mark.parametrize("case", list(AZURE_BODIES))
async def test_azure_request(build: Build, case: str) -> None:
    settings, deployment, expected = AZURE_BODIES[case]
    classifier, wire, _ = build(azure_endpoint=AZURE, azure_api_key="azure-secret-key", **settings)
    result = await classifier.classify(admitted(), SOURCE)
    assert result.verdict is not None
    request = wire.requests[0]
    assert request.url.host == "modstream-test.openai.azure.com"
    assert request.url.path == f"/openai/deployments/{deployment}/chat/completions"
    assert request.url.params["api-version"] == "2025-04-01-preview"
    assert request.headers["api-key"] == "azure-secret-key"
    assert "authorization" not in request.headers  # the OpenAI key is not sent to Azure
    assert parameters(wire.bodies[0]) == expected
    assert result.usage[0].cost_usd is not None  # genai-prices' azure prices


async def test_azure_errors_are_translated_like_openai(build: Build) -> None:
    body = {"error": {"message": "Access denied", "type": "invalid", "code": "401"}}
    classifier, _, _ = build(
        httpx2.Response(401, json=body),
        model="gpt-4o",
        azure_endpoint=AZURE,
        azure_api_key="azure-secret-key",
    )
    with pytest.raises(ProviderAuthError) as caught:
        await classifier.classify(admitted(), SOURCE)
    assert "azure-secret-key" not in str(caught.value)


def test_azure_needs_a_key() -> None:
    settings = load_settings(model="gpt-4o", azure_endpoint=AZURE)
    with pytest.raises(ConfigError, match="MODSTREAM_AZURE_API_KEY"):
        openai_client(settings)


# ---- settings that cannot work ---------------------------------------------------------------

BAD: dict[str, tuple[dict[str, Any], list[str]]] = {
    "minimal on gpt-5.1": (
        {"model": "gpt-5.1", "reasoning_effort": "minimal"},
        ["MODSTREAM_REASONING_EFFORT", "'minimal'", "none, low, medium, high"],
    ),
    "an effort for gpt-4o": (
        {"model": "gpt-4o", "reasoning_effort": "low"},
        ["MODSTREAM_REASONING_EFFORT", "no reasoning_effort"],
    ),
    "an effort no model knows": (
        {"model": "gpt-5", "reasoning_effort": "turbo"},
        ["MODSTREAM_REASONING_EFFORT", "turbo"],
    ),
    "unknown family": (
        {"model_family": "gpt-7"},
        ["MODSTREAM_MODEL_FAMILY", "gpt-7", "gpt-5.1"],
    ),
    "budget plus reasoning over the window": (
        {"model": "o3", "context_window": 8000, "reasoning_effort": "medium"},
        ["reasoning room 8192", "MODSTREAM_CONTEXT_WINDOW (8000)"],
    ),
    "azure and a base URL": (
        {"azure_endpoint": AZURE, "openai_base_url": VLLM},
        ["MODSTREAM_AZURE_ENDPOINT", "OPENAI_BASE_URL"],
    ),
    "unknown response format": (
        {"response_format": "xml"},
        ["MODSTREAM_RESPONSE_FORMAT"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_settings_that_cannot_work_name_the_variable(case: str) -> None:
    values, expected = BAD[case]
    with pytest.raises(ConfigError) as caught:
        load_settings(**values)
    for text in expected:
        assert text in str(caught.value)


def test_server_kinds() -> None:
    assert server_kind(None) is Server.OPENAI
    assert server_kind("https://api.openai.com/v1") is Server.OPENAI
    assert server_kind("https://res.openai.azure.com/openai/v1/") is Server.AZURE
    assert server_kind(VLLM, azure=True) is Server.AZURE
    for url in (VLLM, OLLAMA, LLAMA_CPP, "https://openrouter.ai/api/v1"):
        assert server_kind(url) is Server.COMPATIBLE


# ---- invariants of the table ----------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(
        [
            "gpt-4o",
            "gpt-4.1-nano",
            "o1",
            "o1-mini",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-pro",
            "gpt-5-chat-latest",
            "gpt-5.1",
            "gpt-5.1-codex",
            "gpt-5.2",
            "gpt-oss-120b",
            "openai/gpt-oss-20b",
            "llama3.1:8b",
            "Qwen/Qwen3-8B",
        ]
    ),
    st.text(min_size=1, max_size=30),
)


@given(
    model=NAMES,
    server=st.sampled_from(list(Server)),
    max_tokens=st.integers(1, 10_000),
    effort=st.sampled_from(["auto", "off", *EFFORTS]),
    family=st.sampled_from(["auto", *(f.name for f in FAMILIES)]),
    budget_name=st.sampled_from(["auto", "max_tokens", "max_completion_tokens"]),
    seed=st.none() | st.integers(0, 2**31),
)
def test_table_invariants(
    model: str,
    server: Server,
    max_tokens: int,
    effort: str,
    family: str,
    budget_name: str,
    seed: int | None,
) -> None:
    try:
        params = choose(
            model,
            server,
            max_tokens=max_tokens,
            temperature=0.0,
            seed=seed,
            family=family,
            budget_name=budget_name,
            reasoning_effort=effort,
        )
    except ValueError as exc:  # only an effort the family refuses
        assert "MODSTREAM_REASONING_EFFORT" in str(exc)
        row = family_for(model, server, family)
        assert row.efforts is not None and effort not in row.efforts
        return
    row = params.family
    body = params.kwargs(params.completion_budget)
    # exactly one budget, and the budget covers at least the reply
    assert sum(k in body for k in ("max_tokens", "max_completion_tokens")) == 1
    assert body[params.token_param.value] == params.completion_budget >= max_tokens
    # a reasoning model never gets a temperature, nor max_tokens unless a setting asks
    if row.reasoning and row.name != "gpt-oss":
        assert "temperature" not in body and "seed" not in body
        if budget_name == "auto":
            assert params.token_param is TokenParam.MAX_COMPLETION_TOKENS
    # OpenAI and Azure never get max_tokens unless a setting asks (the budget's name or a
    # family chosen by hand)
    if server is not Server.COMPATIBLE and budget_name == family == "auto":
        assert "max_tokens" not in body
    # an effort sent is one the family takes; auto sends the lowest
    sent = body.get("reasoning_effort")
    if sent is not None and row.efforts is not None:
        assert sent in row.efforts
    if effort == "auto" and row.efforts:
        assert sent == row.efforts[0]
    if effort == "off":
        assert sent is None
    # room for reasoning exactly when the model reasons
    assert (params.reasoning_room > 0) == (
        (row.reasoning or sent is not None) and params.reasoning_effort != "none"
    )
    assert body.get("seed") == (seed if row.seed else None)


# ---- the response-format ladder -------------------------------------------------------------

REJECTED_SCHEMA = httpx2.Response(
    400,
    json={
        "error": {
            "message": "Invalid parameter: 'response_format' of type 'json_schema' is not "
            "supported with this model.",
            "type": "invalid_request_error",
            "param": "response_format",
            "code": None,
        }
    },
)


async def test_auto_steps_down_once_and_retries_the_message(build: Build) -> None:
    classifier, wire, _ = build(REJECTED_SCHEMA, model="gpt-4o", openai_base_url=VLLM)
    with capture_logs() as logs:
        first = await classifier.classify(admitted(), SOURCE)
        second = await classifier.classify(admitted("another text"), SOURCE)
    assert first.verdict is not None and second.verdict is not None
    assert first.failure is None
    assert [u.outcome for u in first.usage] == [UsageOutcome.REJECTED, UsageOutcome.OK]
    formats = [b.get("response_format") for b in wire.bodies]
    assert formats == [POLICY.response_format, {"type": "json_object"}, {"type": "json_object"}]
    system = wire.bodies[1]["messages"][0]["content"]
    assert system.startswith(BUILDER.system)
    schema = POLICY.response_format["json_schema"]["schema"]
    assert system.endswith(json.dumps(schema, separators=(",", ":")))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert (warnings[0]["rejected"], warnings[0]["now"]) == ("json_schema", "json_object")
    assert classifier.formats.mode is ReplyMode.JSON_OBJECT


async def test_a_format_once_accepted_is_not_abandoned(build: Build) -> None:
    classifier, wire, _ = build(
        httpx2.Response(200, json=completion_body()), REJECTED_SCHEMA, model="gpt-4o"
    )
    assert (await classifier.classify(admitted(), SOURCE)).verdict is not None
    result = await classifier.classify(admitted("second"), SOURCE)
    assert isinstance(result.failure, RequestRejected)  # a dead letter, as any 400
    assert len(wire.requests) == 2
    assert classifier.formats.mode is ReplyMode.JSON_SCHEMA


async def test_a_fixed_mode_never_steps_down(build: Build) -> None:
    classifier, wire, _ = build(REJECTED_SCHEMA, model="gpt-4o", response_format="json_schema")
    result = await classifier.classify(admitted(), SOURCE)
    assert isinstance(result.failure, RequestRejected)
    assert len(wire.requests) == 1


async def test_text_mode_sends_no_response_format(build: Build) -> None:
    classifier, wire, _ = build(model="llama3.1:8b", openai_base_url=OLLAMA, response_format="text")
    result = await classifier.classify(admitted(), SOURCE)
    assert result.verdict is not None
    body = wire.bodies[0]
    assert "response_format" not in body
    assert "JSON Schema:" in body["messages"][0]["content"]
    assert body["messages"][1] == BUILDER.messages("have a nice day", None)[1]


# ---- a reasoning model's budget -------------------------------------------------------------


def reasoning_usage(completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": 300,
        "completion_tokens": completion,
        "total_tokens": 300 + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


async def test_all_spent_on_reasoning_is_retried_once_with_a_larger_budget(build: Build) -> None:
    budget = 400 + 1024
    spent = httpx2.Response(
        200, json=completion_body("", finish="length", usage=reasoning_usage(budget, budget))
    )
    answered = httpx2.Response(200, json=completion_body(usage=reasoning_usage(600, 500)))
    classifier, wire, _ = build(spent, answered, model="gpt-5-mini")
    result = await classifier.classify(admitted(), SOURCE)
    assert result.verdict is not None
    assert [b["max_completion_tokens"] for b in wire.bodies] == [budget, 2 * budget]
    assert [u.outcome for u in result.usage] == [UsageOutcome.LENGTH, UsageOutcome.OK]
    assert [u.reasoning_tokens for u in result.usage] == [budget, 500]
    assert {u.reasoning_effort for u in result.usage} == {"minimal"}
    prices = PriceTable()
    assert result.usage[1].cost_usd == prices.cost("gpt-5-mini", 300, 600)
    assert all(u.cost_usd is not None and u.cost_usd > 0 for u in result.usage)


async def test_reasoning_cut_twice_is_a_dead_letter_saying_so(build: Build) -> None:
    budget = 400 + 1024
    cut = [
        httpx2.Response(200, json=completion_body("", finish="length", usage=reasoning_usage(b, b)))
        # the first budget, the doubled one, then the two repair rungs (budget kept)
        for b in (budget, 2 * budget, 2 * budget, 2 * budget)
    ]
    classifier, _, _ = build(*cut, model="gpt-5-mini")
    result = await classifier.classify(admitted(), SOURCE)
    assert result.failure is not None
    assert f"{2 * budget} of them on reasoning" in result.failure.message
    assert "after 2 repairs" in result.failure.message


async def test_requests_waiting_for_a_slot_go_out_in_the_new_mode(build: Build) -> None:
    # One slot: the others wait while the first one is rejected.
    classifier, wire, _ = build(
        REJECTED_SCHEMA, model="gpt-4o", openai_base_url=VLLM, limiter=Limiter(1)
    )
    texts = [f"message {i}" for i in range(4)]
    results = await asyncio.gather(*(classifier.classify(admitted(t), SOURCE) for t in texts))
    assert all(r.verdict is not None for r in results)
    formats = [(b.get("response_format") or {}).get("type") for b in wire.bodies]
    assert formats.count("json_schema") == 1
    assert formats.count("json_object") == 4


def test_the_readme_table_lists_every_family() -> None:
    from pathlib import Path  # noqa: PLC0415

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    providers = readme.split("## Providers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in providers.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [f.name for f in FAMILIES]
    for heading in ("OpenAI", "Azure OpenAI", "vLLM", "Ollama", "llama.cpp's server"):
        assert f"\n### {heading}\n" in providers


def _status_error(param: str | None, message: str, status: int = 400) -> BaseException:
    import openai  # noqa: PLC0415

    request = httpx2.Request("POST", "http://test/v1/chat/completions")
    body = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    response = httpx2.Response(status, json={"error": body}, request=request)
    return openai.BadRequestError(message, response=response, body=body)


FORMAT_ERROR = _status_error("response_format", "'json_schema' is not supported")
OTHER_ERROR = _status_error("messages", "bad content")

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["accepted", "format", "other"]),
        st.sampled_from(list(ReplyMode)),
    ),
    max_size=30,
)


@given(setting=st.sampled_from(["auto", *ReplyMode]), events=EVENTS)
def test_the_ladder_only_goes_down_and_stops_once_a_mode_is_accepted(
    setting: str, events: list[tuple[str, ReplyMode]]
) -> None:
    formats = ResponseFormats(setting)
    ladder = list(ReplyMode)
    start = formats.mode
    accepted_at: ReplyMode | None = None
    for kind, mode in events:
        before = formats.mode
        if kind == "accepted":
            formats.accepted(mode)
            if mode is before:
                accepted_at = before
            continue
        again = formats.downgrade(mode, FORMAT_ERROR if kind == "format" else OTHER_ERROR)
        after = formats.mode
        assert ladder.index(after) >= ladder.index(before)  # never back up
        assert ladder.index(after) - ladder.index(before) <= 1  # one step at a time
        if after is not before:
            assert setting == "auto" and kind == "format" and mode is before and again
            assert accepted_at is not before  # a mode the server took is kept
        if again:  # sent again only in a lower mode than the rejected one
            assert ladder.index(after) > ladder.index(mode)
        if kind == "other":
            assert not again
    if setting != "auto":
        assert formats.mode is start is ReplyMode(setting)


def test_what_counts_as_rejecting_the_format() -> None:
    from consumer.model.reply_format import rejects_response_format  # noqa: PLC0415

    assert rejects_response_format(FORMAT_ERROR)
    assert rejects_response_format(_status_error(None, "Unknown response_format type"))
    assert rejects_response_format(_status_error(None, "json_schema not supported", 422))
    assert not rejects_response_format(OTHER_ERROR)
    assert not rejects_response_format(_status_error("response_format", "x", 500))
    assert not rejects_response_format(ValueError("response_format"))


async def test_a_batch_call_of_a_reasoning_model(build: Build) -> None:
    from consumer.model.batch import BatchFormat, classify_batch  # noqa: PLC0415
    from tests.unit.model.test_batch import batch_reply, item, short, source  # noqa: PLC0415

    usage = reasoning_usage(900, 300)
    reply = batch_reply(item(0), item(1), item(2))
    answer = httpx2.Response(200, json=completion_body(reply, usage=usage))
    classifier, wire, _ = build(answer, model="gpt-5-mini", response_format="json_object")
    form = BatchFormat.of(classifier.builder, classifier.model)
    calls = [classifier.new_call(short(i), source(i)) for i in range(3)]
    results = await classify_batch(classifier, form, calls)
    assert all(r.verdict is not None for r in results)
    body = wire.bodies[0]
    # the reply's budget grows with the batch; the room for reasoning is the call's, once
    assert body["max_completion_tokens"] == 3 * 400 + 1024
    assert body["reasoning_effort"] == "minimal"
    assert body["response_format"] == {"type": "json_object"}
    assert form.reply_format.instructions in body["messages"][0]["content"]
    events = [r.usage[0] for r in results]
    assert [e.reasoning_tokens for e in events] == [100, 100, 100]
    assert sum(e.completion_tokens for e in events) == 900
    assert all(e.reasoning_effort == "minimal" and e.cost_usd for e in events)


async def test_the_azure_key_is_never_in_errors_or_logs() -> None:
    from consumer.model.build import log_request_params, model_stages  # noqa: PLC0415

    secret = "azure-key-must-not-leak"
    with pytest.raises(ConfigError) as caught:
        load_settings(azure_endpoint=AZURE, azure_api_key=secret, openai_base_url=VLLM)
    assert secret not in str(caught.value)
    settings = load_settings(model="gpt-5-mini", azure_endpoint=AZURE, azure_api_key=secret)
    assert secret not in repr(settings)
    client = openai_client(settings, httpx2.AsyncClient(transport=httpx2.MockTransport(Wire())))
    with capture_logs() as logs:
        model_stages(settings, client)
        log_request_params(settings)
    assert logs and secret not in repr(logs)
    assert any(e.get("reasoning_effort") == "minimal" for e in logs)
    await client.close()
