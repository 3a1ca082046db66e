-- Must return no rows: a negative that is an item its user had interacted with up to the sample's
-- position (the target or its history), or a negative of a sample that is not a training sample.
-- A user's training samples are the consecutive positions lo..hi (checked: as many samples as
-- positions), so a user's negatives all belong to training samples exactly when their smallest and
-- largest pos lie in that range: one per-user summary of each side, no join per negative.
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
    select n.user_code, case when r.lo is null or n.lo_neg < r.lo then n.lo_neg else n.hi_neg end as pos
    from (
        select user_code, min(pos) as lo_neg, max(pos) as hi_neg from features.negatives_train group by user_code
    ) n
    left join train_range r using (user_code)
    where r.user_code is null or n.lo_neg < r.lo or n.hi_neg > r.hi or r.n <> r.hi - r.lo + 1
),

final as (
    select 'negative is a positive' as problem, user_code, pos, neg_rank, neg_item_code from positives
    union all
    select 'negative without a training sample', user_code, pos, null, null from orphans
)

select * from final
