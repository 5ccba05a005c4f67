"""Images in requests: the chat model's user message parts, the first tier's multi-modal input,
``category_inputs`` from ``category_applied_input_types``, and no batching; one request each
against a scripted provider (``httpx2.MockTransport`` under the real client)."""

from __future__ import annotations

from typing import Any

import httpx2

from consumer.model.batch import Batcher
from consumer.model.policy import PromptBuilder
from consumer.pipeline.admit import Admitted, Admitter
from consumer.settings import OversizePolicy
from schemas import ImageData, ImageUrl, ModerationRequest
from tests.image_samples import b64, image_bytes
from tests.unit.model.test_classify import MODEL, POLICY, PROMPT, SOURCE, ok, reply_text
from tests.unit.model.test_tier import MOD_MODEL, MakeTiered, make, moderation

__all__ = ["make"]  # the fixture, used by name below

PNG = image_bytes("image/png", 640, 480)
URL = "https://example.com/cat.jpg"
DATA_URL = f"data:image/png;base64,{b64(PNG)}"


def with_images(text: str = "what is this?", *images: ImageData | ImageUrl) -> Admitted:
    gate = Admitter(
        model=MODEL,
        budget_tokens=100_000,
        max_input_tokens=10_000,
        oversize=OversizePolicy.TRUNCATE,
    )
    images = images or (ImageUrl(url=URL), ImageData(data=b64(PNG), mime_type="image/png"))
    return gate.admit(ModerationRequest(id="content-1", text=text, images=images))


def parts(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_the_user_message_carries_the_images_after_its_text() -> None:
    builder = PromptBuilder(POLICY, PROMPT)
    admitted = with_images()
    system, user = builder.messages(admitted.text, None, admitted.images)
    assert system == builder.messages(admitted.text, None)[0]  # the system prompt is unchanged
    text_only = builder.messages(admitted.text, None)[1]["content"]
    assert user["content"] == [
        {"type": "text", "text": text_only},
        parts(URL),
        parts(DATA_URL),
    ]


async def test_the_chat_request_sends_image_url_parts(make: MakeTiered) -> None:
    classifier, provider, paths = make(ok(reply_text()), builder=PromptBuilder(POLICY, PROMPT))
    result = await classifier.classify(with_images(), SOURCE)
    assert result.verdict is not None
    assert paths == ["/v1/chat/completions"]
    user = provider.bodies[0]["messages"][1]
    assert user["role"] == "user"
    assert [p["type"] for p in user["content"]] == ["text", "image_url", "image_url"]
    assert user["content"][1:] == [parts(URL), parts(DATA_URL)]
    assert result.verdict.category_inputs == {}  # no first tier ran


def applied(response: httpx2.Response, **types: list[str]) -> httpx2.Response:
    """``response`` (a moderations reply) with some categories' applied input types."""
    body = response.json()
    body["results"][0]["category_applied_input_types"].update(types)
    return httpx2.Response(200, json=body)


async def test_the_first_tier_sends_the_multimodal_input(make: MakeTiered) -> None:
    reply = applied(moderation(violence=0.97), violence=["text", "image"])
    classifier, provider, paths = make(reply)
    one = with_images("look", ImageData(data=b64(PNG), mime_type="image/png"))
    result = await classifier.classify(one, SOURCE)
    assert paths == ["/v1/moderations"]
    assert provider.bodies[0] == {
        "model": MOD_MODEL,
        "input": [{"type": "text", "text": "look"}, parts(DATA_URL)],
    }
    verdict = result.verdict
    assert verdict is not None
    assert verdict.categories["violence"].flagged
    # One image: the endpoint's "image" is image:0. Unflagged categories carry nothing.
    assert verdict.category_inputs == {"violence": ["text", "image:0"]}


async def test_with_several_images_the_endpoint_cannot_say_which(make: MakeTiered) -> None:
    reply = applied(moderation(violence=0.97), violence=["image"])
    classifier, _, _ = make(reply)
    result = await classifier.classify(with_images(), SOURCE)
    assert result.verdict is not None
    assert result.verdict.category_inputs == {"violence": ["image"]}


async def test_text_only_requests_are_sent_as_before(make: MakeTiered) -> None:
    classifier, provider, _ = make(moderation(violence=0.97))
    gate = Admitter(
        model=MODEL, budget_tokens=10_000, max_input_tokens=10_000, oversize=OversizePolicy.TRUNCATE
    )
    result = await classifier.classify(gate.admit(ModerationRequest(id="c", text="hit")), SOURCE)
    assert provider.bodies[0] == {"model": MOD_MODEL, "input": "hit"}
    assert result.verdict is not None
    assert result.verdict.category_inputs == {"violence": ["text"]}


async def test_a_message_with_images_is_never_batched(make: MakeTiered) -> None:
    classifier, _, _ = make(builder=PromptBuilder(POLICY, PROMPT))
    batcher = Batcher(classifier, size=8, max_tokens=1_000_000, linger_s=0.01)
    assert not batcher.eligible(with_images())
    text_only = Admitted(
        request=ModerationRequest(id="c", text="hi"),
        text="hi",
        context=None,
        truncated=False,
        content_tokens=1,
    )
    assert batcher.eligible(text_only)
