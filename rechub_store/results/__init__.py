"""Results: the job's working copy of the result tables (`tables`), and the verbs that fill them,
scoring (`score`: top-k lists and embeddings) and evaluation (`evaluate`: the model and the
baselines under the evaluation protocol, beyond-accuracy metrics over production lists).

This layer sits above `retrieval` (it records what retrieval finds) and below `publish` (which
copies the working copy out to analysts).
"""
