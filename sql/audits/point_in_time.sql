-- Must return no rows: a sample whose point-in-time features count its own event or later ones.
-- user_event_count = c must mean: the user's events at seq < c are strictly before event_ts and the
-- one at seq c is not (histories are sorted by ts). item_popularity can never reach the item's total.
with samples as (
    select user_code, target_item_code, pos, event_ts, user_event_count, item_popularity
    from features.samples
),

checked as (
    select s.*, h.ts_list[s.user_event_count] as ts_before, h.ts_list[s.user_event_count + 1] as ts_at,
        p.n_events as item_events
    from samples s
    join features.user_history h using (user_code)
    join features.item_popularity p on p.item_code = s.target_item_code
),

final as (
    select * from checked
    where user_event_count < 0 or user_event_count > pos
        or (user_event_count > 0 and ts_before >= event_ts)
        or ts_at < event_ts
        or item_popularity < 0 or item_popularity >= item_events
)

select * from final
