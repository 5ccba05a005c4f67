"""The Kafka adapter: what modstream needs from aiokafka beyond consuming and producing.

::

    client     the options every client shares (security, retries); every client's start,
               bounded, with one clear error when it fails
    diagnosis  why a start failed: unknown host, refused, no answer, SASL, TLS
    translate  aiokafka's errors in our terms: retried, dead-lettered or fatal
    registry   the schema registry: schemas by id, compiled once, its errors in our terms
    registry_outputs  output schemas registered at start-up, compatibility checked; framed
               outputs read back (report, eval)
    protoc     a registry's .proto schema compiled into message classes (protoc in-process)
    topics     the topics modstream reads and writes: checked before use, created on demand
               (each broker answer read), their size limits read
    ranges     a topic range read to its end (report, eval, replay, the verdict cache)
    pacing     paces aiokafka's metadata refresh while the broker is away
"""
