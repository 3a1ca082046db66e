-- Intra-list diversity@k: per list, the mean over pairs of its top-k items of 1 - Jaccard(tags of
-- one, tags of the other), then the mean over lists. Items without tags are left out of the pairs,
-- and a catalogue without tags gives no rows (there is nothing to measure diversity with).
-- Computed from the pairs that share a tag (found through the tags, not by pairing every item with
-- every other): a pair sharing none has Jaccard 0, so distance = 1 - (sum of Jaccard) / (pairs).
with tagged as (
    select l.source, l.model_run_id, l."index", l.user_code, l.rank, len(i.tag_codes) as n_tags, i.tag_codes
    from metrics.lists l
    join metrics.catalogue i using (item_code)
    where len(i.tag_codes) > 0
),

by_tag as (
    select source, model_run_id, "index", user_code, rank, n_tags, unnest(tag_codes) as tag from tagged
),

-- pairs of one list's items sharing at least one tag, with how many they share
sharing as (
    select a.source, a.model_run_id, a."index", a.user_code, b.rank as last_rank,
        count(*) / (any_value(a.n_tags) + any_value(b.n_tags) - count(*)) as jaccard
    from by_tag a
    join by_tag b
        on b.source = a.source and b.model_run_id = a.model_run_id and b."index" = a."index"
        and b.user_code = a.user_code and b.tag = a.tag and a.rank < b.rank
    group by a.source, a.model_run_id, a."index", a.user_code, a.rank, b.rank
),

similarity as (
    -- exact decimals here and in the mean below: the same bits whatever order the rows are added in
    select s.source, s.model_run_id, s."index", s.user_code, c.k, sum(s.jaccard::DECIMAL(38, 18)) as total
    from sharing s
    join metrics.cutoffs c on s.last_rank <= c.k
    group by all
),

per_list as (
    select t.source, t.model_run_id, t."index", t.user_code, c.k, count(*) * (count(*) - 1) / 2 as pairs
    from tagged t
    join metrics.cutoffs c on t.rank <= c.k
    group by all
    having count(*) >= 2
),

final as (
    select p.source, p.model_run_id, p."index", 'diversity' as metric, p.k,
        avg((1.0 - coalesce(s.total, 0) / p.pairs)::DECIMAL(38, 18)) as value, count(*) as n_users
    from per_list p
    left join similarity s using (source, model_run_id, "index", user_code, k)
    group by all
)

select * from final
