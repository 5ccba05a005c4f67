"""The Kafka adapter: what modstream needs from aiokafka beyond consuming and producing.

::

    client     the options every client shares (security, retries); start-up with a clear
               error for bad credentials or TLS
    translate  aiokafka's errors in our terms: retried, dead-lettered or fatal
    topics     the topics modstream reads and writes: checked at start-up, created on demand,
               their size limits read
    pacing     paces aiokafka's metadata refresh while the broker is away
"""
