"""Training: one iteration, and the two schedules that repeat it.

    tasks.py         which task each rollout group plays, the same under both schedules
    steps.py         the steps of one iteration: learn (credit → update), sync weights, library, metrics
    context.py       the run a schedule drives: requests, the trained ledger, reports, checkpoints, evaluations
    sync.py          the synchronous schedule: the steps one after another (the reference algorithm)
    asynchronous.py  the asynchronous schedule: the same steps overlapped, staleness bounded
    train.py         `train`: set-up, resume, the schedule, the final checkpoint and evaluation
"""
