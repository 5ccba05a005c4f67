"""The model side: an admitted content becomes a Verdict (or a permanent failure), plus usage.

::

    build           the model stages from the settings: OpenAI client, classifier, admitter
    classify        Classifier: the conversation with the chat model, retries and the breaker
    tier            the first tier: the provider's moderations endpoint before the chat model
    batch           micro-batching: several short messages in one chat call
    chat_client     the chat call on the hot path (lean aiohttp sender, or the SDK's)
    request_params  what a chat request carries for the model family and server, decided once
    salvage         reading the reply text: the repair ladder's local rungs (pure functions)
    policy          the policy and prompt files, and the prompt built from them
    provider        openai's errors in our terms (the error tree of :mod:`consumer.errors`)
    circuit         the provider's circuit breaker: an outage stops intake, not messages
    limit           concurrency, requests and tokens per minute
    tokens          offline token counting (tiktoken with the BPE files shipped in the package)
    cost            the price of a call in USD (genai-prices, or a prices file)
"""
