"""The command-line tools around the stream: replay, evaluate and look at the topics.

::

    replay    a topic range through a candidate model, prompt or policy
    cache     verdicts already paid for, keyed by content, model, prompt and policy
    evaluate  replayed verdicts scored against labels or a baseline run
    plots     PNG plots for ``modstream eval`` (matplotlib, only when asked for)
    report    the output topics read back and summarised
    sample    a small mixed corpus and a producer for it
"""
