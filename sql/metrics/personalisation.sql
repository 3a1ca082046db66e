-- Personalisation@k: 1 - the mean overlap |A_k ∩ B_k| / k of two users' top-k lists, over a seeded
-- sample of user pairs: the users of each list source, ordered by a hash of (user, seed), are paired
-- 1st with 2nd, 3rd with 4th, ... (disjoint pairs). 0 = everyone gets the same list, 1 = no overlap.
with users as (
    select source, model_run_id, "index", user_code,
        row_number() over (partition by source, model_run_id, "index"
                           order by hash(user_code, getvariable('seed')), user_code) - 1 as rn
    from (select distinct source, model_run_id, "index", user_code from metrics.lists)
),

pairs as (
    select a.source, a.model_run_id, a."index", a.user_code as user_a, b.user_code as user_b
    from users a
    join users b
        on b.source = a.source and b.model_run_id = a.model_run_id and b."index" = a."index"
        and a.rn % 2 = 0 and b.rn = a.rn + 1
),

shared as (
    select p.source, p.model_run_id, p."index", p.user_a, greatest(la.rank, lb.rank) as needs_k
    from pairs p
    join metrics.lists la
        on la.source = p.source and la.model_run_id = p.model_run_id and la."index" = p."index"
        and la.user_code = p.user_a
    join metrics.lists lb
        on lb.source = p.source and lb.model_run_id = p.model_run_id and lb."index" = p."index"
        and lb.user_code = p.user_b and lb.item_code = la.item_code
),

per_pair as (
    select p.source, p.model_run_id, p."index", p.user_a, c.k,
        count(s.needs_k) as n_shared
    from pairs p
    cross join metrics.cutoffs c
    left join shared s
        on s.source = p.source and s.model_run_id = p.model_run_id and s."index" = p."index"
        and s.user_a = p.user_a and s.needs_k <= c.k
    group by p.source, p.model_run_id, p."index", p.user_a, c.k
),

final as (
    select source, model_run_id, "index", 'personalisation' as metric, k,
        -- the mean overlap n_shared / k as one division of integer sums: the same bits in any row order
        1.0 - sum(n_shared) / (k * count(*)) as value, 2 * count(*) as n_users
    from per_pair
    group by source, model_run_id, "index", k
)

select * from final
