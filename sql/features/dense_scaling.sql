-- One row = how one dense feature is scaled to [0, 1]:
--   scaled = clip((t(x) - min_value) / (max_value - min_value), 0, 1), 0 when max_value = min_value,
-- where t is the transform: identity for numeric attributes (kind = 'dense'), ln(1 + x) for counts.
-- min_value/max_value are in transformed space. Counts start from 0 (min_value = 0) so the
-- point-in-time counts of training samples (features.samples_*) and the current counts
-- (features.user_dense / item_dense) share one scale.
with attributes as (
    select a.entity, a.name, try_cast(a.value as DOUBLE) as x
    from staging.attributes a
    semi join features.vocabulary c on c.kind = 'id' and c.entity = a.entity and c.value = a.id
    where a.kind = 'dense'
),

attribute_ranges as (
    select entity, name, 'identity' as transform, min(x) as min_value, max(x) as max_value
    from attributes where isfinite(x) group by entity, name
),

user_counts as (
    select count(*) as n from features.events group by user_code
),

item_counts as (
    select count(*) as n from features.events group by item_code
),

count_ranges as (
    select 'user' as entity, 'event_count' as name, 'log1p' as transform,
        0.0 as min_value, ln(1 + coalesce(max(n), 0)) as max_value
    from user_counts
    union all
    select 'item', 'popularity', 'log1p', 0.0, ln(1 + coalesce(max(n), 0))
    from item_counts
),

final as (
    select entity, name, transform, min_value::DOUBLE as min_value, max_value::DOUBLE as max_value
    from attribute_ranges
    union all
    select entity, name, transform, min_value, max_value from count_ranges
)

select * from final
