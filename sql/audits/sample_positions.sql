-- Must return no rows: a sample whose pos is outside its user's history, whose target is not the
-- item at that position, or whose position does not match its split (test = last, valid = second-to-last).
-- Checked set-wise: the event at the sample's position is found by a join on (user_code, seq) in
-- features.events, and the history length comes from features.user_history without reading its lists.
with samples as (
    select 'train' as split, user_code, target_item_code, pos from features.samples_train
    union all select 'valid', user_code, target_item_code, pos from features.samples_valid
    union all select 'test', user_code, target_item_code, pos from features.samples_test
),

lengths as (
    select user_code, n_events from features.user_history
),

checked as (
    select s.*, h.n_events, e.item_code as item_at_pos
    from samples s
    left join lengths h using (user_code)
    left join features.events e on e.user_code = s.user_code and e.seq = s.pos
),

final as (
    select * from checked
    where n_events is null
        or pos < 1 or pos >= n_events
        or item_at_pos is distinct from target_item_code
        or (split = 'test' and pos <> n_events - 1)
        or (split = 'valid' and pos <> n_events - 2)
        or (split = 'train' and pos >= n_events - 1)
)

select * from final
