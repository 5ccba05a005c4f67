"""Which inputs are in the shadow share: decided by content id alone, so a message replayed,
redelivered or seen by another worker is always in, or always out."""

from __future__ import annotations

import hashlib

#: Sampling must not line up with any other hash of the id a producer may use.
_PERSON = b"modstream-shadow"
_SPACE = 2**64


def in_share(content_id: str, share: float) -> bool:
    """Whether ``content_id`` is among the ``share`` (0..1) of ids the candidate also sees.

    An id in at one share is in at every larger one, so raising the share only adds inputs.
    """
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(content_id.encode(), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") < share * _SPACE
