"""The Files API's store: uploaded batch inputs and the output and error files batches write.

Files live in memory for the life of the server (or until ``POST /_fake/reset``); the
documents are OpenAI's ``FileObject``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from consumer.testing.fake_openai.reply import new_id

#: Batch files expire after 30 days at OpenAI; the fake only reports it.
EXPIRES_AFTER_S = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file: its bytes and what ``GET /v1/files/{id}`` says about it."""

    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes

    def document(self) -> dict[str, Any]:
        """The ``FileObject``."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "expires_at": self.created_at + EXPIRES_AFTER_S,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """Files by id, in upload order."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}

    def add(self, content: bytes, *, filename: str, purpose: str) -> StoredFile:
        """Store ``content`` under a new ``file-...`` id."""
        stored = StoredFile(new_id("file"), filename, purpose, int(time.time()), content)
        self.files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """The file, or None when there is no such id (or it was deleted)."""
        return self.files.get(file_id)

    def delete(self, file_id: str) -> bool:
        """Forget the file; False when there was none."""
        return self.files.pop(file_id, None) is not None

    def clear(self) -> None:
        """Forget every file."""
        self.files.clear()
