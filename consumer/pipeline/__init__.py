"""The pipeline: one input record in, its verdict (or dead letter) and usage out, offsets committed.

A record flows one way through these stages, each taking typed values and handing typed values
on::

    source       Envelope: the aiokafka consumer, fetching only what the work window has room for
    decode       ModerationRequest, or the reason the bytes are not one
    registry_decode  the same from a schema-registry record (avro, protobuf, json_schema):
                 wire format, payload read under its schema, fields mapped to the request's parts
    admit        Admitted: tokens counted, the hard limit enforced, content fitted into the budget
    images       CheckedImage: a request's images checked (count, size, base64, magic bytes)
    stages       one record through decode, admit, classify and delivery, or into a dead letter
                 (classify, from :mod:`consumer.model`, is handed in by :mod:`consumer.app`)
    publish      OutRecord: outputs serialized, size-checked, sent and acknowledged
    encode       an output's value: JSON, or registry-framed Avro / JSON (MODSTREAM_OUTPUT_FORMAT)
    carry        the input headers an output carries (MODSTREAM_CARRY_HEADERS, trace context)
    dead_letter  DeadLetter: the input's bytes and the reason, cut to fit the dead-letter topic
    delivery     at-least-once (acknowledged, then committed) or exactly-once (chosen by app)
    outbox       exactly-once: a range's outputs and its offsets in one transaction
    offsets      out-of-order completion, in-order commits (the done watermark per partition)
    commits      Committer: one commit at a time, on an interval; lag and stuck messages
    runner       Pipeline: the work window, the per-key ordering, the rebalances
"""
