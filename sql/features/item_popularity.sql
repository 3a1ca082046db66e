-- One row = one item with events in this build: n_events counts all its events; n_train only the
-- events a model may learn from, i.e. without the validation/test targets of the users kept in the
-- splits (the popularity negative sampler and the popularity baseline use n_train).
with users as (
    select user_code, n_events,
        case
            when n_events < getvariable('min_seq_len') then 0
            when getvariable('validation') then 2
            else 1
        end as held_out
    from features.user_history
),

events as (
    select e.item_code, e.seq < u.n_events - u.held_out as is_train
    from features.events e
    join users u using (user_code)
),

final as (
    select item_code, count(*) as n_events, count(*) filter (where is_train) as n_train
    from events
    group by item_code
)

select * from final
