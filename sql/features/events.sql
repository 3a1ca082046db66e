-- One row = one event of staging.interactions with integer codes. seq is the event's 0-based
-- position in its user's history, ordered by (ts, event_order, item_code): total and
-- deterministic, so ties on ts always resolve the same way (file order first).
-- user_events_before = the number of the user's events with a ts strictly before this one's (its
-- rank by ts alone): the point-in-time user_event_count of features.samples, computed here in the
-- pass that numbers seq rather than by a second sort of the events in features.samples.
-- incremental: rebuild user_code in features.changed_users
-- (a user's rows depend on that user's events only: an incremental build keeps the other users'.)
with interactions as (
    select user_id, item_id, ts, event_order from staging.interactions
    where not getvariable('incremental') or user_id in (select user_id from features.changed_users)
),

coded as (
    select u.code as user_code, i.code as item_code, s.ts, s.event_order
    from interactions s
    join features.vocab_user_id u on u.value = s.user_id
    join features.vocab_item_id i on i.value = s.item_id
),

final as (
    select user_code, item_code, ts,
        (row_number() over (partition by user_code order by ts, event_order, item_code) - 1)::INTEGER as seq,
        (rank() over (partition by user_code order by ts) - 1)::INTEGER as user_events_before
    from coded
)

select * from final
