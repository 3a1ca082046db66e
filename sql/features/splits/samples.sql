-- One row = one positive sample of any split: the event at position pos (0-based, >= 1) of a kept
-- user's history is the target, the pos events before it are its history (address, not copy:
-- features.user_history.item_codes[greatest(1, pos - max_seq_len + 1) : pos]).
-- Kept users have n_events >= min_seq_len. split: 'test' = pos n - 1; 'valid' = pos n - 2 when
-- validation is on; 'train' = every other pos >= 1 (Torch-RecHub's prefix augmentation).
-- Point-in-time dense features count only events with ts strictly before the target's ts:
-- user_event_count = the user's own events, item_popularity = the target item's events (all users).
-- Scaled versions use the event_count / popularity rows of features.dense_scaling.
with point_in_time as (
    select user_code, item_code, ts, seq, user_events_before as user_event_count,
        rank() over (partition by item_code order by ts) - 1 as item_popularity
    from features.events
),

users as (
    select user_code, n_events
    from features.user_history
    where n_events >= getvariable('min_seq_len')
),

labeled as (
    select
        case
            when e.seq = u.n_events - 1 then 'test'
            when e.seq = u.n_events - 2 and getvariable('validation') then 'valid'
            else 'train'
        end as split,
        e.*
    from point_in_time e
    join users u using (user_code)
    where e.seq >= 1
),

scales as (
    select
        any_value(min_value) filter (where entity = 'user' and name = 'event_count') as user_min,
        any_value(max_value) filter (where entity = 'user' and name = 'event_count') as user_max,
        any_value(min_value) filter (where entity = 'item' and name = 'popularity') as item_min,
        any_value(max_value) filter (where entity = 'item' and name = 'popularity') as item_max
    from features.dense_scaling
),

final as (
    select
        l.split,
        l.user_code,
        l.item_code as target_item_code,
        l.seq as pos,
        l.ts as event_ts,
        l.user_event_count::INTEGER as user_event_count,
        l.item_popularity::INTEGER as item_popularity,
        case when s.user_max > s.user_min
            then least(greatest((ln(1 + l.user_event_count) - s.user_min) / (s.user_max - s.user_min), 0.0), 1.0)
            else 0.0
        end as user_event_count_scaled,
        case when s.item_max > s.item_min
            then least(greatest((ln(1 + l.item_popularity) - s.item_min) / (s.item_max - s.item_min), 0.0), 1.0)
            else 0.0
        end as item_popularity_scaled
    from labeled l
    cross join scales s
)

select * from final
