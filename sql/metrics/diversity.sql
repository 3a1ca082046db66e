-- Intra-list diversity@k: per list, the mean over pairs of its top-k items of 1 - Jaccard(tags of
-- one, tags of the other), then the mean over lists. Pairs with an untagged item are left out, and
-- a catalogue without tags gives no rows (there is nothing to measure diversity with).
with tagged as (
    select l.*, i.tag_codes
    from metrics.lists l
    join metrics.catalogue i using (item_code)
    where len(i.tag_codes) > 0
),

pairs as (
    select a.source, a.model_run_id, a."index", a.user_code, b.rank as last_rank,
        len(list_intersect(a.tag_codes, b.tag_codes)) as shared,
        len(a.tag_codes) + len(b.tag_codes) as sizes
    from tagged a
    join tagged b
        on b.source = a.source and b.model_run_id = a.model_run_id and b."index" = a."index"
        and b.user_code = a.user_code and a.rank < b.rank
    where b.rank <= (select max(k) from metrics.cutoffs)
),

per_list as (
    select p.source, p.model_run_id, p."index", p.user_code, c.k,
        avg(1.0 - p.shared / (p.sizes - p.shared)) as distance
    from pairs p
    join metrics.cutoffs c on p.last_rank <= c.k
    group by all
),

final as (
    select source, model_run_id, "index", 'diversity' as metric, k,
        avg(distance) as value, count(*) as n_users
    from per_list
    group by all
)

select * from final
