"""The fake's image parts: deterministic scores, the ``harmful`` marker, tile-rule usage, and
``category_applied_input_types`` on moderations."""

from __future__ import annotations

from consumer.model.image_tokens import image_tokens, unknown_size_tokens
from consumer.testing.fake_openai.heuristic import FLAG_THRESHOLD, judge
from consumer.testing.fake_openai.images import IMAGE_CATEGORIES, judge_image, with_images
from consumer.testing.fake_openai.reply import context_for, moderation_body, user_images
from consumer.testing.fake_openai.usage import message_tokens
from tests.image_samples import b64, image_bytes

PLAIN = "https://example.com/cat.jpg"
HARMFUL_URL = "https://example.com/harmful.jpg"


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(raw)}"


def user(text: str, *urls: str) -> dict[str, object]:
    content: list[dict[str, object]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": content}


def test_image_scores_are_deterministic_and_low_unless_marked() -> None:
    assert judge_image(PLAIN) == judge_image(PLAIN)
    assert set(judge_image(PLAIN)) == IMAGE_CATEGORIES
    assert max(judge_image(PLAIN).values()) < 0.06
    assert judge_image(HARMFUL_URL)["violence"] >= 0.9
    marked = data_url(image_bytes(comment=b"HARMFUL"))
    assert judge_image(marked)["violence"] >= 0.9
    assert judge_image(data_url(image_bytes()))["violence"] < 0.06


def test_an_image_raises_only_the_image_categories() -> None:
    text = judge("a calm afternoon")
    both = with_images(text, [HARMFUL_URL])
    assert both.scores["violence"] >= FLAG_THRESHOLD
    assert both.flagged and not text.flagged
    for key in set(text.scores) - IMAGE_CATEGORIES:
        assert both.scores[key] == text.scores[key]


def test_chat_content_is_judged_with_its_images() -> None:
    messages = [{"role": "system", "content": "rules"}, user("<content>hi</content>", HARMFUL_URL)]
    assert user_images(messages) == [HARMFUL_URL]
    assert context_for("<content>hi</content>", user_images(messages)).judgement.flagged
    assert not context_for("<content>hi</content>").judgement.flagged


def test_usage_counts_images_by_the_tile_rule() -> None:
    raw = image_bytes("image/png", 1024, 1024)
    text_only = message_tokens(user("hi"), "gpt-4o")
    assert message_tokens(user("hi", data_url(raw)), "gpt-4o") == text_only + image_tokens(
        1024, 1024, "gpt-4o"
    )
    assert message_tokens(user("hi", PLAIN), "gpt-4o-mini") == message_tokens(
        user("hi"), "gpt-4o-mini"
    ) + unknown_size_tokens("gpt-4o-mini")


def test_moderations_report_the_input_types_each_score_applies_to() -> None:
    [result] = moderation_body("omni-moderation-latest", ["a calm afternoon"], [HARMFUL_URL])[
        "results"
    ]
    assert result["flagged"]
    assert result["categories"]["violence"]
    assert result["category_applied_input_types"]["violence"] == ["text", "image"]
    assert result["category_applied_input_types"]["harassment"] == ["text"]
    [text_only] = moderation_body("omni-moderation-latest", ["a calm afternoon"])["results"]
    assert set(map(tuple, text_only["category_applied_input_types"].values())) == {("text",)}
