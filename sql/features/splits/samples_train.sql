-- One row = one training sample (prefix augmentation: every target before the held-out ones).
-- Columns and point-in-time semantics: see features.samples; the history is
-- features.user_history.item_codes[greatest(1, pos - max_seq_len + 1) : pos].
with samples as (
    select * from features.samples where split = 'train'
),

final as (
    select user_code, target_item_code, pos, event_ts,
        user_event_count, item_popularity, user_event_count_scaled, item_popularity_scaled
    from samples
)

select * from final
