-- Must return no rows: a negative that is an item its user had interacted with up to the sample's
-- position (the target or its history), or a negative of a sample that is not a training sample.
-- A user's training samples are the consecutive positions lo..hi (checked: as many samples as
-- positions), so a negative belongs to a training sample exactly when its pos lies in its user's
-- range: one small per-user table instead of a join with every training sample.
with positives as (
    select n.* from features.negatives_train n
    semi join features.events e
        on e.user_code = n.user_code and e.item_code = n.neg_item_code and e.seq <= n.pos
),

train_range as (
    select user_code, min(pos) as lo, max(pos) as hi, count(*) as n
    from features.samples_train
    group by user_code
),

orphans as (
    select n.* from features.negatives_train n
    left join train_range r using (user_code)
    where r.user_code is null or n.pos < r.lo or n.pos > r.hi or r.n <> r.hi - r.lo + 1
),

final as (
    select 'negative is a positive' as problem, * from positives
    union all
    select 'negative without a training sample', * from orphans
)

select * from final
