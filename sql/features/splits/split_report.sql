-- One row = one number describing this build's splits: users total / kept / dropped for short
-- histories (n_events < min_seq_len), events, items, samples per split, negatives, and training
-- samples with fewer than the requested negatives (users who interacted with (nearly) every item).
with settings as (
    select (case when getvariable('neg_mode') = 'pairwise' then 1 else getvariable('neg_ratio') end)::INTEGER
        as neg_ratio
),

users as (
    select count(*) as users_total,
        count(*) filter (where n_events >= getvariable('min_seq_len')) as users_kept
    from features.user_history
),

-- ranks are 1..k without gaps, so a sample has all its negatives iff it has rank neg_ratio
short_negatives as (
    select count(*) as n
    from features.samples_train s
    anti join (
        select user_code, pos from features.negatives_train where neg_rank = (select neg_ratio from settings)
    ) full_samples using (user_code, pos)
),

final as (
    select 'users_total' as name, users_total::BIGINT as value from users
    union all select 'users_kept', users_kept from users
    union all select 'users_dropped_short', users_total - users_kept from users
    union all select 'events', count(*) from features.events
    union all select 'items', count(*) from features.item_popularity
    union all select 'samples_train', count(*) from features.samples_train
    union all select 'samples_valid', count(*) from features.samples_valid
    union all select 'samples_test', count(*) from features.samples_test
    union all select 'negatives_train', count(*) from features.negatives_train
    union all select 'train_samples_short_of_negatives', n from short_negatives
    union all select 'neg_ratio', neg_ratio from settings
    union all select 'max_seq_len', getvariable('max_seq_len')
    union all select 'min_seq_len', getvariable('min_seq_len')
)

select * from final
