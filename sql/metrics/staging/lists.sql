-- One row = one item of one top-k list of the current evaluation run (variable run_id): the lists
-- that production gives a seeded sample of users, from the model and from every baseline
-- (written to main.evaluation_lists by `evaluate`). source = 'model' or the baseline's name.
select source, model_run_id, "index", user_code, rank, item_code
from main.evaluation_lists
where run_id = getvariable('run_id')
