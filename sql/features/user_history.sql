-- One row = one user's whole history, oldest first: item_codes[k + 1] and ts_list[k + 1] are the
-- event with seq = k. Samples address it by position (no copies per sample); the history of a
-- sample at pos is item_codes[greatest(1, pos - max_seq_len + 1) : pos].
-- incremental: rebuild user_code in features.changed_users
with events as (
    select user_code, item_code, ts, seq from features.events
    where not getvariable('incremental') or user_code in (select user_code from features.changed_users)
),

final as (
    select user_code,
        list(item_code order by seq) as item_codes,
        list(ts order by seq) as ts_list,
        count(*)::INTEGER as n_events
    from events
    group by user_code
)

select * from final
