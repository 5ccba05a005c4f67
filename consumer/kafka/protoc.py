"""A registry's Protobuf schema (``.proto`` text) compiled into message classes.

Confluent-compatible registries hand Protobuf schemas out as ``.proto`` source (Apicurio's
ccompat API has no ``format=serialized``), and the ``protobuf`` runtime cannot parse source:
``grpcio-tools`` carries protoc itself, run in-process into a descriptor set. The well-known
types (``google/protobuf/*.proto``) are on its include path; references to other registered
schemas are not supported.
"""

from __future__ import annotations

import importlib.resources
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import Message
from grpc_tools import protoc

__all__ = ["compile_proto", "message_class"]

_NAME = "schema.proto"


def compile_proto(source: str) -> FileDescriptor:
    """The file ``source`` declares; ValueError when protoc refuses it."""
    include = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="modstream-proto-") as scratch:
        folder = Path(scratch)
        (folder / _NAME).write_text(source, encoding="utf-8")
        out = folder / "set.pb"
        code = protoc.main(
            [
                "protoc",
                f"-I{folder}",
                f"-I{include}",
                f"--descriptor_set_out={out}",
                "--include_imports",
                str(folder / _NAME),
            ]
        )
        if code != 0:
            raise ValueError(f"protoc exit {code}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    # A pool of its own per schema: two schemas may declare the same message names.
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # dependencies first, as protoc writes them
        pool.Add(file)
    return pool.FindFileByName(_NAME)


def message_class(file: FileDescriptor, indexes: Sequence[int]) -> type[Message]:
    """The message type the wire format's message indexes point at (``[0]``: the first)."""
    types: Sequence[Descriptor] = list(file.message_types_by_name.values())
    found: Descriptor | None = None
    for index in indexes:
        if not 0 <= index < len(types):
            raise ValueError(f"message index {index} is out of range ({len(types)} types)")
        found = types[index]
        types = found.nested_types
    if found is None:
        raise ValueError("no message indexes")
    return message_factory.GetMessageClass(found)
