-- One row = one dense feature of one user or item (entity, code = its user_code / item_code),
-- scaled to [0, 1] with features.dense_scaling: numeric attributes (kind = 'dense', current value),
-- and the user's event_count / the item's popularity (all events, log1p). features.user_dense and
-- item_dense are cut from it.
with attributes as (
    select a.entity, c.code, a.name, try_cast(a.value as DOUBLE) as x
    from staging.attributes a
    join features.vocabulary c on c.kind = 'id' and c.entity = a.entity and c.value = a.id
    where a.kind = 'dense'
),

counts as (
    select 'user' as entity, user_code as code, 'event_count' as name, n_events::DOUBLE as x
    from features.user_history
    union all
    select 'item', item_code, 'popularity', n_events::DOUBLE from features.item_popularity
),

raw_values as (
    select entity, code, name, x from attributes where isfinite(x)
    union all
    select entity, code, name, x from counts
),

final as (
    select v.entity, v.code, v.name,
        case when s.max_value > s.min_value
            then least(greatest(
                ((case when s.transform = 'log1p' then ln(1 + v.x) else v.x end) - s.min_value)
                    / (s.max_value - s.min_value), 0.0), 1.0)
            else 0.0
        end as value
    from raw_values v
    join features.dense_scaling s on s.entity = v.entity and s.name = v.name
)

select * from final
