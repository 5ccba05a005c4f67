"""The model side: an admitted content becomes a Verdict (or a permanent failure), plus usage.

Modules, in the order a message meets them (``build`` composes them from the settings)::

    build           the model stages from the settings: OpenAI client, classifier, admitter
    classify        Classifier: the conversation (first tier, chat, repair ladder) to a verdict
    batch           micro-batching: several short messages in one chat call
    conversation    Call: one message's conversation, shared by the parts below
    tier            the first tier: the provider's moderations endpoint before the chat model
    calls           ModelCalls: every call through the circuit breaker and the retry layer
    watches         poison or outage, bad content or misconfiguration: told apart
    chat_call       ChatCall: one chat call (limiter slot, reply mode, errors, usage read)
    chat_client     the chat call's transport (lean aiohttp sender, or the SDK's)
    request_params  what a chat request carries for the model family and server, decided once
    reply_format    the reply's JSON shape per mode, and ``auto``'s one-way downgrade ladder
    ladder          reading a reply: valid, salvaged, or a repair request (pure functions)
    salvage         the ladder's salvage rung: a good value out of its wrapping (pure)
    verdicts        VerdictFactory: every verdict built one way; triage(choice) of a reply
    ledger          UsageLedger: one priced usage event per call, kept with its message
    folding         bounded usage: a message's repeated failures folded into one event
    policy          the policy and prompt files, and the prompt built from them
    messages        Message: a chat message as built and sent (content a string, or parts)
    image_parts     a message's images as chat content parts and as moderation input
    provider        openai's errors in our terms (the error tree of :mod:`consumer.errors`)
    circuit         the provider's circuit breaker: an outage stops intake, not messages
    limit           concurrency, requests and tokens per minute
    tokens          offline token counting (tiktoken with the BPE files shipped in the package)
    image_tokens    an image's prompt tokens: OpenAI's tile rule per model (pure)
    cost            the price of a call in USD (genai-prices, or a prices file)

Batching and replay (:mod:`consumer.tools.replay`) use the Classifier's public parts only:
``calls``, ``ledger`` and ``verdicts``; a Batch API replay also ``request_body`` (a call's
request, as the chat call would post it) and ``read_reply`` (a reply that came by another
way, read with no further call). ``cost``'s ``PriceTable.batch_api()`` prices those at the
Batch API's discount.
"""
