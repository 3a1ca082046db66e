-- One row = one item of the catalogue (every code of features.vocab_item_id) with what the metrics
-- need: its training count (n_train, 0 without events), its popularity percentile among the
-- catalogue (percent_rank of n_train: 0 = least popular, 1 = most), its self-information
-- -log2 p(item) with p = (n_train + 1) / (sum n_train + catalogue size) (add-one smoothing, so an
-- item never seen in training is finite), and its tags (sorted distinct codes; [] without tags).
with items as (
    select v.code as item_code, coalesce(p.n_train, 0) as n_train
    from features.vocab_item_id v
    left join features.item_popularity p on p.item_code = v.code
),

totals as (
    select sum(n_train) as total, count(*) as n from items
),

final as (
    select i.item_code, i.n_train,
        percent_rank() over (order by i.n_train) as popularity_percentile,
        -log2((i.n_train + 1) / (t.total + t.n)) as self_information,
        coalesce(g.tag_codes, []) as tag_codes
    from items i
    cross join totals t
    left join features.item_tags g on g.item_code = i.item_code
)

select * from final
