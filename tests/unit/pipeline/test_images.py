"""A request's images: every dead-letter kind with its reason, header dimensions of real files
(made by Pillow), and the admitter counting them against the budget."""

from __future__ import annotations

import base64
import json

import pytest

from consumer.errors import AdmissionError, DecodeError
from consumer.model.image_tokens import image_tokens, unknown_size_tokens
from consumer.pipeline.admit import MIN_BUDGET_TOKENS, Admitter
from consumer.pipeline.decode import decode
from consumer.pipeline.images import check_images, dimensions, sniff
from consumer.settings import InputFormat, OversizePolicy
from schemas import ImageData, ImageUrl, ModerationRequest
from tests.image_samples import FORMATS, b64, image_bytes
from tests.unit.pipeline.test_decode import envelope

MODEL = "gpt-4o"
MIB = 1024 * 1024


def data(raw: bytes, mime: str = "image/png") -> ImageData:
    return ImageData.model_validate({"data": b64(raw), "mime_type": mime})


def check(*images: ImageData | ImageUrl, max_images: int = 4, max_bytes: int = 5 * MIB) -> None:
    check_images(images, max_images=max_images, max_image_bytes=max_bytes)


# ---- the dead-letter kinds, each with its reason ---------------------------------------------


def test_too_many_images_names_the_count_and_the_limit() -> None:
    url = ImageUrl(url="https://example.com/a.png")
    with pytest.raises(AdmissionError) as caught:
        check(url, url, url, max_images=2)
    assert caught.value.message == (
        "request has 3 images; the limit (MODSTREAM_MAX_IMAGES) is 2: 1 over"
    )


def test_an_oversized_image_names_its_index_and_the_limit() -> None:
    small = data(image_bytes())
    big = data(image_bytes() + b"\0" * 2000)
    with pytest.raises(AdmissionError) as caught:
        check(small, big, max_bytes=1500)
    message = caught.value.message
    assert message.startswith("images[1] is ")
    assert "the limit (MODSTREAM_MAX_IMAGE_BYTES) is 1,500" in message


def test_a_huge_image_is_refused_on_its_base64_length_before_decoding() -> None:
    # Not even valid base64 after the first bytes: the length alone decides.
    huge = ImageData(data="A" * 8_000_000 + "!", mime_type="image/png")
    with pytest.raises(AdmissionError, match=r"images\[0\] is about 6,000,000 bytes decoded"):
        check(huge)


@pytest.mark.parametrize(
    "text", ["not base64!", "iVBORw0KGgo", "iVBO Rw0K", "iVBORw0KGgo=\n"], ids=repr
)
def test_undecodable_base64_names_the_image(text: str) -> None:
    with pytest.raises(DecodeError) as caught:
        check(
            ImageUrl(url="https://example.com/ok.png"), ImageData(data=text, mime_type="image/png")
        )
    assert caught.value.message == (
        "images[1].data is not valid base64 (RFC 4648 alphabet and padding, no whitespace)"
    )


def test_bytes_of_another_type_than_declared() -> None:
    jpeg = image_bytes("image/jpeg")
    with pytest.raises(DecodeError) as caught:
        check(data(jpeg, "image/png"))
    assert caught.value.message == (
        "images[0] says image/png but its bytes are image/jpeg (checked by their magic bytes)"
    )


@pytest.mark.parametrize(
    "raw",
    [b"hello, world", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"RIFF\0\0\0\0WAVEfmt "],
    ids=["text", "svg", "wav"],
)
def test_bytes_of_no_image_type(raw: bytes) -> None:
    with pytest.raises(DecodeError, match=r"images\[0\] says image/webp but its bytes match no"):
        check(data(raw, "image/webp"))


def test_a_bad_mime_type_is_a_decode_dead_letter_naming_the_image() -> None:
    value = json.dumps(
        {
            "id": "a",
            "text": "hi",
            "images": [{"data": b64(image_bytes()), "mime_type": "image/bmp"}],
        }
    ).encode()
    with pytest.raises(DecodeError) as caught:
        decode(envelope(value), input_format=InputFormat.JSON, max_message_bytes=MIB)
    assert caught.value.message == (
        "not a valid moderation request: images[0].mime_type 'image/bmp' is not supported; "
        "one of image/png, image/jpeg, image/gif, image/webp"
    )


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ({"url": "http://example.com/a.png"}, "images[0].url must be an https URL"),
        ({"url": "https://x/a", "detail": "high"}, "images[0] has an unknown field 'detail'"),
        ({"mime_type": "image/png"}, "images[0].data is missing"),
        ("https://example.com/a.png", "images[0] must be an object with 'url', or with 'data'"),
    ],
)
def test_malformed_image_inputs_are_decode_dead_letters(image: object, reason: str) -> None:
    value = json.dumps({"id": "a", "text": "hi", "images": [image]}).encode()
    with pytest.raises(DecodeError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decode(envelope(value), input_format=InputFormat.JSON, max_message_bytes=MIB)


# ---- what passes -------------------------------------------------------------------------------


@pytest.mark.parametrize("mime", sorted(FORMATS))
def test_every_supported_type_is_sniffed_and_sized(mime: str) -> None:
    raw = image_bytes(mime, 300, 200)
    assert sniff(raw) == mime
    assert dimensions(raw, mime) == (300, 200)
    [checked] = check_images([data(raw, mime)], max_images=1, max_image_bytes=MIB)
    assert (checked.width, checked.height, checked.size_bytes) == (300, 200, len(raw))
    assert checked.url == f"data:{mime};base64,{b64(raw)}"


@pytest.mark.parametrize(
    "options",
    [{"lossless": True}, {"mode": "RGBA"}],
    ids=["webp-lossless-VP8L", "webp-alpha-VP8X"],
)
def test_webp_variants_are_sized(options: dict[str, object]) -> None:
    raw = image_bytes("image/webp", 123, 45, **options)  # type: ignore[arg-type]
    assert dimensions(raw, "image/webp") == (123, 45)


def test_progressive_jpeg_is_sized() -> None:
    raw = image_bytes("image/jpeg", 640, 480, progressive=True)
    assert dimensions(raw, "image/jpeg") == (640, 480)


def test_a_cut_header_leaves_the_size_unknown_not_a_dead_letter() -> None:
    raw = image_bytes("image/jpeg", 640, 480)[:20]
    [checked] = check_images([data(raw, "image/jpeg")], max_images=1, max_image_bytes=MIB)
    assert (checked.width, checked.height) == (None, None)


def test_a_url_image_is_not_fetched() -> None:
    [checked] = check_images(
        [ImageUrl(url="https://example.com/cat.jpg")], max_images=1, max_image_bytes=1
    )
    assert checked.url == "https://example.com/cat.jpg"
    assert (checked.width, checked.height, checked.size_bytes) == (None, None, None)


# ---- the admitter -------------------------------------------------------------------------------


def admitter(budget: int = 10_000, **kw: int) -> Admitter:
    return Admitter(
        model=MODEL,
        budget_tokens=budget,
        max_input_tokens=10_000,
        oversize=OversizePolicy.TRUNCATE,
        **kw,
    )


def test_images_are_counted_by_the_tile_rule() -> None:
    raw = image_bytes("image/png", 1024, 1024)
    request = ModerationRequest(
        id="r", text="look", images=(data(raw), ImageUrl(url="https://example.com/x.png"))
    )
    gate = admitter()
    admitted = gate.admit(request)
    text_only = gate.admit(ModerationRequest(id="r", text="look"))
    assert [i.index for i in admitted.images] == [0, 1]
    assert admitted.content_tokens == (
        text_only.content_tokens + image_tokens(1024, 1024, MODEL) + unknown_size_tokens(MODEL)
    )
    assert text_only.images == ()


def test_the_limits_come_from_the_admitter() -> None:
    url = ImageUrl(url="https://example.com/x.png")
    with pytest.raises(AdmissionError, match="MODSTREAM_MAX_IMAGES"):
        admitter(max_images=0).admit(ModerationRequest(id="r", text="t", images=(url,)))
    image = data(image_bytes())
    with pytest.raises(AdmissionError, match="MODSTREAM_MAX_IMAGE_BYTES"):
        admitter(max_image_bytes=10).admit(ModerationRequest(id="r", text="t", images=(image,)))


def test_images_that_leave_no_room_for_the_text_are_refused() -> None:
    url = ImageUrl(url="https://example.com/x.png")
    budget = unknown_size_tokens(MODEL) + MIN_BUDGET_TOKENS - 1
    with pytest.raises(AdmissionError, match="the 1 images take 1,445 tokens"):
        admitter(budget).admit(ModerationRequest(id="r", text="t", images=(url,)))


def test_the_text_is_cut_to_the_room_the_images_leave() -> None:
    url = ImageUrl(url="https://example.com/x.png")
    budget = unknown_size_tokens(MODEL) + 100
    admitted = admitter(budget).admit(
        ModerationRequest(id="r", text=" ".join(["word"] * 500), images=(url,))
    )
    assert admitted.truncated
    assert admitted.content_tokens <= budget


def test_base64_is_strict() -> None:
    # urlsafe alphabet and missing padding are not RFC 4648 standard base64.
    raw = image_bytes()
    loose = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    if loose == b64(raw):  # pragma: no cover - the sample always has padding or -_ characters
        pytest.skip("sample happens to be the same in both alphabets")
    with pytest.raises(DecodeError, match="not valid base64"):
        check(ImageData(data=loose, mime_type="image/png"))
