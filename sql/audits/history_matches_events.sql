-- Must return no rows: a user's history list that disagrees with features.events, which every
-- other audit reads positions from. Element k + 1 of item_codes and ts_list must be the user's
-- event at seq k, and n_events their number. One pass over the lists (unnested once, not indexed
-- per sample), joined to the events on (user_code, seq) both ways.
with listed as (
    select user_code, n_events,
        unnest(item_codes) as item_code,
        unnest(ts_list) as ts,
        unnest(range(len(item_codes)))::INTEGER as seq,
        len(item_codes) as n_items,
        len(ts_list) as n_ts
    from features.user_history
),

events as (
    select user_code, seq, item_code, ts from features.events
),

final as (
    select coalesce(l.user_code, e.user_code) as user_code, coalesce(l.seq, e.seq) as seq,
        l.item_code as listed_item, e.item_code as event_item, l.ts as listed_ts, e.ts as event_ts
    from listed l
    full outer join events e on e.user_code = l.user_code and e.seq = l.seq
    where l.user_code is null or e.user_code is null
        or l.item_code is distinct from e.item_code or l.ts is distinct from e.ts
        or l.n_items <> l.n_events or l.n_ts <> l.n_events
)

select * from final
