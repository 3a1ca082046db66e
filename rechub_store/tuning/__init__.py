"""Hyperparameter search on the validation split (`rechub-store tune`).

`study.tune` runs an Optuna study (TPE, seeded) over a model's `SEARCH_SPACE` (declared in its
model file): every trial trains through `training.trainer.fit_model`, reporting each epoch's
validation NDCG@10 to a pruner through the trainer's epoch callback; trials and studies are rows of
`meta.tuning_trials` / `meta.tuning_studies` (`records`); the best trial's model is registered as a
normal model run with `tuned_from` = the study. This layer sits above training and ranking.
"""
