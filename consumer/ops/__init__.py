"""Operations: what the people who run modstream look at and steer with.

::

    metrics         Prometheus metrics, one method per event (the table of every metric)
    families        the metric families behind it: names, help, labels, buckets
    health          /metrics, /healthz and /readyz of one consumer process
    port            the operations port and its three routes, for the consumer and the supervisor
    logs            structlog: JSON lines, repeated lines collapsed, secrets kept out
    tracing         OpenTelemetry: a record's spans, continued from its traceparent; the provider
    trace_headers   the W3C trace context read from and written into Kafka headers
    progress        consume's progress line every MODSTREAM_PROGRESS_INTERVAL_S
    scrape          read a running consumer's /metrics into a typed snapshot
    top             ``modstream top``: that snapshot as a live dashboard
    workers         ``consume --workers N``: N consumer processes under one supervisor
    worker_role     worker i's environment (index, budget share, transactional id) and its side
    restarts        after a worker exits: restart with backoff, leave it, or stop the group
    workers_health  the supervisor's merged /metrics and probes
"""
