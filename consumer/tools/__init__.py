"""The command-line tools around the stream: replay, evaluate and look at the topics.

::

    replay       a topic range through a candidate model, prompt or policy: the range
                 resolved, the clients in one exit stack (the command's composition)
    replayer     the run: each record from the cache, an estimate or the model, in budget,
                 from the pipeline's parts (range reader, Classifier, verdicts, Publisher)
    replay_outcome  what a replay reports and both runs share: the range, the result, the
                 stop reason, the progress it tells
    replay_records  a replayed record as the service sees it: envelope, admitted, cache key
    replay_view  what a person sees of a replay: the progress bar, the summary table
    batch_replay ``replay --batch-api``: the range as one Batch API batch (collect, submit
                 or find and resume, read the answers, publish), at the batch price
    batch_job    the batch at the provider: found by its key or submitted, polled until it
                 ends, its result files read
    batch_requests  the batch's input file: the synchronous request per input, custom ids,
                 the key a resumed replay finds its batch by
    batch_results   the output and error files mapped back to the inputs by custom id
    round_robin  a range's partitions read in turn, so a capped replay is a fair sample
    budget       CostBudget: --max-cost, a message's worst case reserved, its cost settled
    outage       OutageWatch: when a replay gives up on a model that answers nothing
    cache        verdicts already paid for, keyed by content, model, prompt and policy
    evaluate     replayed verdicts scored against labels or a baseline run
    plots        PNG plots for ``modstream eval`` (matplotlib, only when asked for)
    report       the output topics read back and summarised
    sample       a small mixed corpus and a producer for it
"""
