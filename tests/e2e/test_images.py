"""Images end to end: the real broker, the fake model over HTTP (both tiers), modstream
in-process.

Five records under the tiered policy of :mod:`tests.e2e.test_tiering`: a URL image and a plain
base64 PNG with clean text (every score low: the first tier decides), a PNG carrying the fake's
``harmful`` marker (violence 0.90+ and violence/graphic inside the band: the chat model is asked
and sees the image too), an image over ``MODSTREAM_MAX_IMAGE_BYTES`` and one whose base64 does
not decode (dead letters of the admit stage that say why).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from consumer.app import serve
from consumer.model.image_tokens import image_tokens, unknown_size_tokens
from consumer.testing.fake_openai.admin import FakeAdmin
from tests.e2e.harness import assert_nothing_lost, new_run
from tests.e2e.test_tiering import CHAT, MODERATIONS, tiered_policy
from tests.fake_server import fake_openai_server
from tests.image_samples import b64, image_bytes

pytestmark = pytest.mark.timeout(300)

MAX_IMAGE_BYTES = 20_000
PNG = image_bytes("image/png", 640, 480)
HARMFUL_PNG = image_bytes("image/png", 1024, 1024, comment=b"harmful")
BIG_PNG = image_bytes("image/png", 64, 64, comment=b"\0" * MAX_IMAGE_BYTES)
URL = "https://images.example.com/beach.jpg"


def record(content_id: str, *images: dict[str, str]) -> bytes:
    text = "A photo from our holiday by the sea."
    return json.dumps({"id": content_id, "text": text, "images": list(images)}).encode()


def png(raw: bytes) -> dict[str, str]:
    return {"data": b64(raw), "mime_type": "image/png"}


RECORDS = {
    "url": record("url", {"url": URL}),
    "png": record("png", png(PNG)),
    "harmful": record("harmful", png(HARMFUL_PNG)),
    "oversized": record("oversized", png(BIG_PNG)),
    "undecodable": record("undecodable", {"data": "iVBORw0KGgo*!", "mime_type": "image/png"}),
}


async def test_images_get_verdicts_and_bad_ones_are_dead_letters_that_say_why(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with fake_openai_server(latency_ms=5, seed=17) as url:
        async with FakeAdmin(url) as admin:
            await admin.reset()
            run = new_run(kafka_bootstrap, url, partitions=2)
            await run.create_topics()
            await run.produce(list(RECORDS.values()))
            settings = run.settings(
                policy_file=tiered_policy(tmp_path), max_image_bytes=MAX_IMAGE_BYTES
            )
            await serve(settings, exit_when_idle=2)
            calls: dict[str, int] = (await admin.stats())["by_path"]

    await assert_nothing_lost(run)
    summary = await run.outputs()
    verdicts = {v.content_id: v for v in summary.verdicts}
    assert set(verdicts) == {"url", "png", "harmful"}
    # Every verdict's first tier saw the images; only the harmful one was uncertain.
    assert calls.get(MODERATIONS) == 3
    assert calls.get(CHAT) == 1

    for clean in ("url", "png"):
        verdict = verdicts[clean]
        assert [t.name for t in verdict.tiers] == ["moderation"], clean
        assert verdict.action == "allow" and not verdict.flagged
        assert verdict.category_inputs == {}

    harmful = verdicts["harmful"]
    assert [t.name for t in harmful.tiers] == ["moderation", "chat"]
    assert harmful.tiers[0].scores["violence"] >= 0.9  # the image, not the text
    assert harmful.tiers[1].scores["violence"] >= 0.9  # the chat model saw it too
    assert harmful.categories["violence"].flagged
    assert harmful.action != "allow"  # the default policy reviews violence
    assert harmful.category_inputs["violence"] == ["text", "image:0"]
    assert set(harmful.category_inputs) <= {n for n, c in harmful.categories.items() if c.flagged}

    # The chat call's prompt holds the image's tiles (1024 x 1024: 4 tiles) as the fake counts.
    [chat_usage] = [u for u in summary.usage if u.model == settings.model]
    assert chat_usage.content_id == "harmful"
    assert chat_usage.prompt_tokens > image_tokens(1024, 1024, settings.model)
    assert chat_usage.cost_usd is not None and chat_usage.cost_usd > 0
    assert image_tokens(1024, 1024, settings.model) < unknown_size_tokens(settings.model)

    dead = {
        json.loads(base64.b64decode(d.payload_b64 or ""))["id"]: d for d in summary.dead_letters
    }
    assert set(dead) == {"oversized", "undecodable"}
    oversized = dead["oversized"]
    assert (oversized.stage, oversized.error_class) == ("admit", "AdmissionError")
    # Refused on its base64 length, before decoding: "about" the decoded size.
    assert re.fullmatch(
        r"images\[0\] is about [\d,]+ bytes decoded; the limit \(MODSTREAM_MAX_IMAGE_BYTES\) "
        r"is 20,000: about [\d,]+ over",
        oversized.error_message,
    ), oversized.error_message
    undecodable = dead["undecodable"]
    assert (undecodable.stage, undecodable.error_class) == ("admit", "DecodeError")
    assert undecodable.error_message == (
        "images[0].data is not valid base64 (RFC 4648 alphabet and padding, no whitespace)"
    )
    assert oversized.payload_b64 is not None
    assert base64.b64decode(oversized.payload_b64) == RECORDS["oversized"]  # the original bytes
