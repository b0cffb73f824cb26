"""The cleaning pipeline: its stages over a stage cache (``stage_cache``, ``worker_state``,
``stages``), run in order by ``pipeline`` (in-process for ``cleaner.clean``, as Prefect tasks by
``flows/``), and the decisions it makes: flag scores and flagging (``flagging``), retraining and
its verdict (``retrain``, ``verdict``), suggested fixes, run history and per-error explanations.
"""
