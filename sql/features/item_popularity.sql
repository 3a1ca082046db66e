-- One row = one item with events in this build: n_events counts all its events; n_train only the
-- events a model may learn from, i.e. without the validation/test targets of the users kept in the
-- splits (the popularity negative sampler and the popularity baseline use n_train).
-- The held-out targets are the last event (test) and, with validation, the one before it of each
-- kept user: the tail of its history list, so the events are only counted per item.
with held_out as (
    select unnest(item_codes[greatest(1, n_events - held + 1) : n_events]) as item_code
    from (
        select item_codes, n_events, case when getvariable('validation') then 2 else 1 end as held
        from features.user_history
    )
    where n_events >= getvariable('min_seq_len')
),

held_counts as (
    select item_code, count(*) as n_held from held_out group by item_code
),

event_counts as (
    select item_code, count(*) as n_events from features.events group by item_code
),

final as (
    select e.item_code, e.n_events, e.n_events - coalesce(h.n_held, 0) as n_train
    from event_counts e
    left join held_counts h using (item_code)
)

select * from final
