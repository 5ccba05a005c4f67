"""The pipeline: one input record in, its verdict (or dead letter) and usage out, offsets committed.

A record flows one way through these stages, each taking typed values and handing typed values
on::

    source    Envelope: the aiokafka consumer, fetching only what the work window has room for
    decode    ModerationRequest, or the reason the bytes are not one
    admit     Admitted: tokens counted, the hard limit enforced, content fitted into the budget
              (classify, from :mod:`consumer.model`, is handed in by :mod:`consumer.app`)
    publish   verdicts, usage events and dead letters to their topics, acknowledged; the
              exactly-once outbox
    offsets   out-of-order completion, in-order commits (the done watermark per partition)
    runner    Pipeline: the work window, the per-key ordering, commits and rebalances
"""
