"""A request's images checked before any model call: count, size, base64, type, dimensions.

:meth:`consumer.pipeline.admit.Admitter.admit` calls :func:`check_images` first. What can never
succeed is a dead letter of the ``admit`` stage whose reason names the image by its index and
the limit or the fault, never its bytes:

- more images than ``MODSTREAM_MAX_IMAGES``: ``AdmissionError``;
- an inline image over ``MODSTREAM_MAX_IMAGE_BYTES`` once decoded: ``AdmissionError`` (checked
  on the base64 length first, so a huge one is refused before it is decoded);
- base64 that does not decode (strictly: RFC 4648's alphabet and padding, no whitespace):
  ``DecodeError``;
- bytes that do not start with the magic of their ``mime_type`` (a JPEG sent as
  ``image/png``, a text file, an SVG): ``DecodeError``. A provider would reject them with a
  400 anyway, after we paid for the call and its retries.

The MIME type itself is checked by the request's model (decode). Dimensions are read from the
file header (PNG IHDR, GIF logical screen, JPEG SOFn, WebP VP8/VP8L/VP8X), no image library:
they only feed the token count (:mod:`consumer.model.image_tokens`). A header that is cut short
or unusual leaves them unknown, and the image is counted at the largest cost an image can have;
that is never a dead letter, since the provider may still read the image. A URL image is not
fetched (the provider does): its size and dimensions are unknown.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.errors import AdmissionError, DecodeError
from schemas import ImageData, ImageInput, ImageMime

__all__ = ["CheckedImage", "check_images", "dimensions", "sniff"]

#: Each type's leading bytes (WebP: RIFF, 4 bytes of length, then WEBP).
_MAGIC: dict[ImageMime, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


@dataclass(frozen=True, slots=True)
class CheckedImage:
    """One image that passed the checks: the URL to send and what is known of its size."""

    index: int
    #: What goes in ``image_url.url``: the https URL, or ``data:<mime>;base64,<data>``.
    url: str
    #: Pixels, from the header; ``None`` for a URL image or an unreadable header.
    width: int | None = None
    height: int | None = None
    #: Decoded bytes of an inline image; ``None`` for a URL image.
    size_bytes: int | None = None


def check_images(
    images: Sequence[ImageInput], *, max_images: int, max_image_bytes: int
) -> tuple[CheckedImage, ...]:
    """Check every image of a request, in order; raise the first problem found."""
    if len(images) > max_images:
        raise AdmissionError(
            f"request has {len(images)} images; the limit (MODSTREAM_MAX_IMAGES) is "
            f"{max_images}: {len(images) - max_images} over"
        )
    return tuple(
        _check_data(i, image, max_image_bytes)
        if isinstance(image, ImageData)
        else CheckedImage(i, image.url)
        for i, image in enumerate(images)
    )


def _check_data(index: int, image: ImageData, max_bytes: int) -> CheckedImage:
    where = f"images[{index}]"
    encoded = image.data
    # 4 base64 characters carry 3 bytes: a value this long cannot decode to max_bytes or less.
    about = len(encoded) // 4 * 3
    if about - 2 > max_bytes:
        raise AdmissionError(
            f"{where} is about {about:,} bytes decoded; the limit (MODSTREAM_MAX_IMAGE_BYTES) "
            f"is {max_bytes:,}: about {about - max_bytes:,} over"
        )
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(
            f"{where}.data is not valid base64 (RFC 4648 alphabet and padding, no whitespace)"
        ) from None
    if len(raw) > max_bytes:
        raise AdmissionError(
            f"{where} is {len(raw):,} bytes decoded; the limit (MODSTREAM_MAX_IMAGE_BYTES) "
            f"is {max_bytes:,}: {len(raw) - max_bytes:,} over"
        )
    found = sniff(raw)
    if found != image.mime_type:
        what = f"are {found}" if found else "match no supported image type"
        raise DecodeError(
            f"{where} says {image.mime_type} but its bytes {what} (checked by their magic bytes)"
        )
    size = dimensions(raw, found)
    return CheckedImage(
        index,
        f"data:{image.mime_type};base64,{encoded}",
        width=size[0] if size else None,
        height=size[1] if size else None,
        size_bytes=len(raw),
    )


def sniff(raw: bytes) -> ImageMime | None:
    """The supported image type ``raw`` starts with, by its magic bytes; ``None``: none."""
    for mime, prefixes in _MAGIC.items():
        if raw.startswith(prefixes):
            if mime == "image/webp" and raw[8:12] != b"WEBP":
                continue  # a RIFF file that is not WebP (WAV, AVI)
            return mime
    return None


def dimensions(raw: bytes, mime: ImageMime) -> tuple[int, int] | None:
    """``(width, height)`` from the header of an image of type ``mime``; ``None`` when the
    header is cut short, unusual, or says 0 pixels."""
    try:
        size = _READERS[mime](raw)
    except (struct.error, IndexError):
        return None
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def _png(raw: bytes) -> tuple[int, int] | None:
    if raw[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", raw[16:24])
    return int(width), int(height)


def _gif(raw: bytes) -> tuple[int, int] | None:
    width, height = struct.unpack("<HH", raw[6:10])
    return int(width), int(height)


#: JPEG start-of-frame markers (baseline, progressive...): all SOFn but DHT, JPG and DAC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(raw: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(raw):
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", raw[at + 2 : at + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", raw[at + 5 : at + 9])
            return int(width), int(height)
        if marker == 0xDA or length < 2:  # scan data before any frame header: give up
            return None
        at += 2 + length
    return None


def _webp(raw: bytes) -> tuple[int, int] | None:
    chunk = raw[12:16]
    if chunk == b"VP8X":  # extended: 24-bit width-1 and height-1
        width = int.from_bytes(raw[24:27], "little") + 1
        height = int.from_bytes(raw[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":  # lossless: 14-bit width-1 and height-1 after the 0x2f signature
        if raw[20] != 0x2F:
            return None
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: the key frame's start code, then 14-bit sizes
        if raw[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", raw[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    return None


_READERS = {"image/png": _png, "image/gif": _gif, "image/jpeg": _jpeg, "image/webp": _webp}
