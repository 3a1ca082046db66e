-- One row = one dense feature of one user, scaled to [0, 1] with features.dense_scaling:
-- its numeric attributes (kind = 'dense', current value) and event_count (all its events, log1p).
with attributes as (
    select u.code as user_code, a.name, try_cast(a.value as DOUBLE) as x
    from staging.user_attributes a
    join features.vocab_user_id u on u.value = a.user_id
    where a.kind = 'dense'
),

counts as (
    select user_code, 'event_count' as name, n_events::DOUBLE as x from features.user_history
),

raw_values as (
    select user_code, name, x from attributes where isfinite(x)
    union all
    select user_code, name, x from counts
),

final as (
    select v.user_code, v.name,
        case when s.max_value > s.min_value
            then least(greatest(
                ((case when s.transform = 'log1p' then ln(1 + v.x) else v.x end) - s.min_value)
                    / (s.max_value - s.min_value), 0.0), 1.0)
            else 0.0
        end as value
    from raw_values v
    join features.dense_scaling s on s.entity = 'user' and s.name = v.name
)

select * from final
