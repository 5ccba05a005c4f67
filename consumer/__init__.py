"""modstream: a Kafka content-moderation stream processor.

The flow, one module per stage: source -> decode -> admit -> limit -> classify -> publish ->
offsets. ``pipeline`` wires them, ``app`` owns the clients' lifespan, ``cli`` is the entry.
"""

__version__ = "0.1.0"
