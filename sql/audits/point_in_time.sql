-- Must return no rows: a sample whose point-in-time features count its own event or later ones.
-- user_event_count = c must mean: the user's event at seq c - 1 is strictly before event_ts and the
-- one at seq c is not (events are numbered in time order). item_popularity can never reach the
-- item's total. Checked set-wise: each event carries its predecessor's time (one pass over the
-- events in user order), and each sample meets the event at seq c by one join on (user_code, seq),
-- never by indexing its user's whole history list.
with samples as (
    select user_code, target_item_code, pos, event_ts, user_event_count, item_popularity
    from features.samples
),

events as (
    select user_code, seq, ts, lag(ts) over (partition by user_code order by seq) as previous_ts
    from features.events
),

checked as (
    select s.*, e.previous_ts as ts_before, e.ts as ts_at, p.n_events as item_events
    from samples s
    left join events e on e.user_code = s.user_code and e.seq = s.user_event_count
    left join features.item_popularity p on p.item_code = s.target_item_code
),

final as (
    select * from checked
    where user_event_count < 0 or user_event_count > pos
        or (user_event_count > 0 and (ts_before is null or ts_before >= event_ts))
        or ts_at is null or ts_at < event_ts
        or item_events is null or item_popularity < 0 or item_popularity >= item_events
)

select * from final
