"""Shadow evaluation: a candidate model, prompt or policy tried on a share of live traffic.

A sampled input (by content id, so the same message is always in or out) is classified a second
time by the candidate once its production verdict is delivered; the shadow verdict goes to a
topic of its own, carrying the production verdict's ``event_id`` in ``shadow_of``. Production
is not touched: a shadow call runs on a limiter of its own with a share of the budget, never
retries (a 429 or an outage drops it), is shed while production itself meets 429s, never
dead-letters, and never holds back a commit (it is not in the offset tracker). What is still
running at the end gets one commit interval, then is dropped and counted.

Modules::

    sample   which inputs are in the shadow share (deterministic by content id)
    compare  a shadow verdict against production's: the action agrees, categories that flip
    build    the candidate's classifier and admitter from the MODSTREAM_SHADOW_* settings
    runner   Shadow: the bounded, best-effort second opinion, published on its own topic
"""
