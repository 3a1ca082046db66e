"""Ranking: what training-time validation, evaluation, scoring and the baselines share.

Exact scoring and top-k (`exact`), ranking metrics (`metrics`), model inference (`embeddings`),
the evaluation protocol (`protocol`: seen filters, pessimistic ties, slices) and the baselines
(`baselines`). This layer imports only `data` and `models`, so both `training` and `retrieval`
can use it.
"""
