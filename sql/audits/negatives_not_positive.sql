-- Must return no rows: a negative that is an item its user had interacted with up to the sample's
-- position (the target or its history), or a negative of a sample that is not a training sample.
with positives as (
    select n.* from features.negatives_train n
    semi join features.events e
        on e.user_code = n.user_code and e.item_code = n.neg_item_code and e.seq <= n.pos
),

orphans as (
    select n.* from features.negatives_train n
    anti join features.samples_train s using (user_code, pos)
),

final as (
    select 'negative is a positive' as problem, * from positives
    union all
    select 'negative without a training sample', * from orphans
)

select * from final
