-- Overlap@k with the previous run (variable previous_run_id, NULL = none: no rows): for the users
-- whose lists were recorded in both runs, the mean |now_k ∩ before_k| / k, per list source (the
-- model's lists are compared across model runs: a retrain's churn is what this measures).
-- Churn@k = 1 - overlap@k.
with before as (
    select source, "index", user_code, rank, item_code
    from main.evaluation_lists
    where run_id = getvariable('previous_run_id')
),

common as (
    select distinct l.source, l.model_run_id, l."index", l.user_code
    from metrics.lists l
    semi join before b on b.source = l.source and b."index" = l."index" and b.user_code = l.user_code
),

shared as (
    select l.source, l.model_run_id, l."index", l.user_code, greatest(l.rank, b.rank) as needs_k
    from metrics.lists l
    join before b
        on b.source = l.source and b."index" = l."index" and b.user_code = l.user_code
        and b.item_code = l.item_code
),

per_user as (
    select u.source, u.model_run_id, u."index", u.user_code, c.k, count(s.needs_k) as n_shared
    from common u
    cross join metrics.cutoffs c
    left join shared s
        on s.source = u.source and s.model_run_id = u.model_run_id and s."index" = u."index"
        and s.user_code = u.user_code and s.needs_k <= c.k
    group by u.source, u.model_run_id, u."index", u.user_code, c.k
),

final as (
    -- the mean of n_shared / k as one division of integer sums: the same bits in any row order
    select source, model_run_id, "index", 'overlap' as metric, k,
        sum(n_shared) / (k * count(*)) as value, count(*) as n_users
    from per_user
    group by source, model_run_id, "index", k
)

select * from final
