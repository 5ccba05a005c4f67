"""Benchmarks: modstream against Little's law, the seed's one-at-a-time pattern and raw Kafka.

    .venv/bin/python -m tests.benchmarks                       # everything, writes BENCHMARKS.md
    .venv/bin/python -m tests.benchmarks --quick               # small counts, a smoke run
    .venv/bin/python -m tests.benchmarks --only latency,tpm    # some sections

Everything runs for real: a dedicated Apache Kafka broker (``deploy/kafka/kafka.sh`` on port
39192, data in ``.run/kafka-bench``), the fake OpenAI server over HTTP, and modstream as its
own process (``python -m consumer consume --exit-when-idle 3``) so that its CPU time and peak
RSS are its own. The baselines (the seed's sequential consumer and a raw consume -> produce
pass-through) live in :mod:`tests.benchmarks.baselines` and run as processes the same way.

None of these modules is named ``test_*``: ``make test`` and pytest's default test paths never
collect them.
"""
