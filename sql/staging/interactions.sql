-- One row = one distinct event (user_id, item_id, ts) of raw.interactions, after
--   1. de-duplication: the same (user, item, ts) seen twice is one event; it keeps the rating and
--      the position of its first occurrence;
--   2. the optional implicit-feedback threshold: rating >= min_rating (NULL = keep every event;
--      with a threshold set, events without a rating are dropped);
--   3. the optional k-core filter (k_core > 0): repeatedly drop the events of users and items with
--      fewer than k_core events until every remaining user and item has at least k_core.
-- event_order = batch_seq * 10^12 + line of the first occurrence: the order in which rows appeared
-- in the ingested files, used to break timestamp ties.
-- Only batches up to upto_batch_seq are read (NULL = all; `nightly --run-date` backfills set it).
-- incremental: append
-- An incremental build keeps the previous table and appends the events first seen in the batches
-- after the previous build (built_batch_seq): a later duplicate of an earlier event never replaces
-- it, so the earlier rows are already final. Only without k-core (the planner checks), whose
-- filter is global.
with recursive

source as (
    select user_id, item_id, ts, rating, batch_seq::BIGINT * 1000000000000 + line as event_order
    from raw.interactions
    where (getvariable('upto_batch_seq') is null or batch_seq <= getvariable('upto_batch_seq'))
      and (not getvariable('incremental') or batch_seq > getvariable('built_batch_seq'))
),

-- incremental build: the (user, item, ts) keys of the batches the previous build read
earlier as (
    select user_id, item_id, ts
    from raw.interactions
    where getvariable('incremental') and batch_seq <= getvariable('built_batch_seq')
),

deduplicated as (
    select user_id, item_id, ts, arg_min_null(rating, event_order) as rating, min(event_order) as event_order
    from source
    anti join earlier using (user_id, item_id, ts)
    group by user_id, item_id, ts
),

thresholded as (
    select *
    from deduplicated
    where getvariable('min_rating') is null or rating >= getvariable('min_rating')
),

-- k-core as a recursive query: each round keeps the events whose user and item both still have
-- k_core events; a round that would remove nothing emits no rows, which ends the recursion.
-- The answer is the last round, filtered once more (a no-op when it was stable, empty when
-- nothing survives).
k_core_rounds (round, user_id, item_id, ts, rating, event_order) as (
    select 0, user_id, item_id, ts, rating, event_order
    from thresholded
    where getvariable('k_core') > 0
    union all
    select round + 1, user_id, item_id, ts, rating, event_order
    from (
        select *, min(least(user_events, item_events)) over () as weakest
        from (
            select *,
                count(*) over (partition by user_id) as user_events,
                count(*) over (partition by item_id) as item_events
            from k_core_rounds
        )
    )
    where weakest < getvariable('k_core')
      and user_events >= getvariable('k_core')
      and item_events >= getvariable('k_core')
),

k_core_last as (
    select user_id, item_id, ts, rating, event_order
    from (
        select *,
            count(*) over (partition by user_id) as user_events,
            count(*) over (partition by item_id) as item_events
        from k_core_rounds
        where round = (select max(round) from k_core_rounds)
    )
    where user_events >= getvariable('k_core') and item_events >= getvariable('k_core')
),

final as (
    select user_id, item_id, ts, rating, event_order from thresholded where getvariable('k_core') = 0
    union all
    select user_id, item_id, ts, rating, event_order from k_core_last
)

select * from final
