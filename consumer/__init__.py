"""modstream: a Kafka content-moderation stream processor.

The flow, one module per stage: source -> decode -> admit -> limit -> classify -> publish ->
offsets. ``pipeline`` wires them, ``app`` owns the clients' lifespan, ``cli`` is the entry.

Errors are one tree (``errors``); third-party errors become ours in one place per side:
``provider`` for the model's (openai), ``broker`` for Kafka's (aiokafka). ``circuit`` is the
provider breaker, ``kafka_pacing`` keeps aiokafka's metadata retries from spinning while the
broker is away, ``logs`` collapses repeated lines, ``metrics`` and ``health`` are operations
(``ops_port`` starts the operations port for both kinds of process).
``request_params`` decides, once, what classify's chat requests carry for the model family and
the server (the budget's name, temperature, reasoning effort, seed, the response format's
mode); ``cost`` prices each call (genai-prices, or a prices file).
``workers`` supervises N consumer processes of one group (``consume --workers N``):
restarts, signals, the budget split; ``workers_health`` serves their merged metrics and probes.
``salvage`` reads the model's reply text for classify and batch: the repair ladder's local
rungs (pure functions).
"""

__version__ = "0.1.0"
