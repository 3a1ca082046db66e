-- Must return no rows: a sample whose pos is outside its user's history, whose target is not the
-- item at that position, or whose position does not match its split (test = last, valid = second-to-last).
with samples as (
    select 'train' as split, user_code, target_item_code, pos from features.samples_train
    union all select 'valid', user_code, target_item_code, pos from features.samples_valid
    union all select 'test', user_code, target_item_code, pos from features.samples_test
),

checked as (
    select s.*, h.n_events, h.item_codes[s.pos + 1] as item_at_pos
    from samples s
    left join features.user_history h using (user_code)
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
