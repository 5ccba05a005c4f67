"""Small real images made in code (Pillow, a dev dependency through matplotlib), for the unit and
e2e tests of image input: each supported format, at any size, optionally carrying a marker."""

from __future__ import annotations

import base64
import io

from PIL import Image

#: Pillow's format name per MIME type.
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}


def image_bytes(
    mime: str = "image/png",
    width: int = 64,
    height: int = 48,
    *,
    mode: str = "RGB",
    comment: bytes = b"",
    **options: object,
) -> bytes:
    """A ``width`` x ``height`` image of type ``mime``; ``comment`` is appended after the image
    data (decoders ignore trailing bytes; the fake server's ``harmful`` marker goes there)."""
    out = io.BytesIO()
    Image.new(mode, (width, height), (200, 30, 30) if mode == "RGB" else None).save(
        out, format=FORMATS[mime], **options
    )
    return out.getvalue() + comment


def b64(raw: bytes) -> str:
    """Standard base64 text of ``raw``."""
    return base64.b64encode(raw).decode()
