-- One row = a user whose rows the per-user models (features.events, features.user_history,
-- features.negatives_train) recompute in an incremental build: the users with an event first seen
-- in a raw batch after the previous build's (event_order >= (built_batch_seq + 1) * 10^12; a later
-- duplicate of an earlier event keeps the earlier event_order, so it changes nothing). The rows of
-- every other user are kept as they are. Empty in a full build, which recomputes every row.
with new_events as (
    select distinct user_id
    from staging.interactions
    where getvariable('incremental')
      and event_order >= (getvariable('built_batch_seq') + 1)::BIGINT * 1000000000000
),

final as (
    select n.user_id, u.code as user_code
    from new_events n
    join features.vocab_user_id u on u.value = n.user_id
)

select * from final
