-- Gini index of how often each catalogue item appears in the top-k lists (items never recommended
-- count as 0): 0 = every item equally often, near 1 = a few items take every slot.
-- With counts x_1 <= ... <= x_n: G = 2 * sum(i * x_i) / (n * sum(x)) - (n + 1) / n.
with lists as (
    select distinct source, model_run_id, "index" from metrics.lists
),

counts as (
    select l.source, l.model_run_id, l."index", c.k, i.item_code, count(r.item_code) as x
    from lists l
    cross join metrics.cutoffs c
    cross join metrics.catalogue i
    left join metrics.lists r
        on r.source = l.source and r.model_run_id = l.model_run_id and r."index" = l."index"
        and r.item_code = i.item_code and r.rank <= c.k
    group by all
),

ranked as (
    select *, row_number() over (partition by source, model_run_id, "index", k order by x, item_code) as i
    from counts
),

users as (
    select source, model_run_id, "index", count(distinct user_code) as n_users from metrics.lists group by all
),

final as (
    select r.source, r.model_run_id, r."index", 'gini' as metric, r.k,
        case when sum(r.x) = 0 then 0.0
            else 2.0 * sum(r.i * r.x) / (count(*) * sum(r.x)) - (count(*) + 1.0) / count(*)
        end as value,
        any_value(u.n_users) as n_users
    from ranked r
    join users u using (source, model_run_id, "index")
    group by r.source, r.model_run_id, r."index", r.k
)

select * from final
