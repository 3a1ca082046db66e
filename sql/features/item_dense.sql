-- One row = one dense feature of one item, scaled to [0, 1] with features.dense_scaling:
-- its numeric attributes (kind = 'dense', current value) and popularity (all its events, log1p).
with attributes as (
    select i.code as item_code, a.name, try_cast(a.value as DOUBLE) as x
    from staging.item_attributes a
    join features.vocab_item_id i on i.value = a.item_id
    where a.kind = 'dense'
),

counts as (
    select item_code, 'popularity' as name, n_events::DOUBLE as x from features.item_popularity
),

raw_values as (
    select item_code, name, x from attributes where isfinite(x)
    union all
    select item_code, name, x from counts
),

final as (
    select v.item_code, v.name,
        case when s.max_value > s.min_value
            then least(greatest(
                ((case when s.transform = 'log1p' then ln(1 + v.x) else v.x end) - s.min_value)
                    / (s.max_value - s.min_value), 0.0), 1.0)
            else 0.0
        end as value
    from raw_values v
    join features.dense_scaling s on s.entity = 'item' and s.name = v.name
)

select * from final
