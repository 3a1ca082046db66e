-- self: (entity VARCHAR, name VARCHAR, value VARCHAR, code INTEGER)
-- One row = one value of one sparse (categorical) attribute of users or items, and its code
-- (1.. per entity + name; 0 is unknown). Stable across builds: old codes kept, new values numbered
-- after that attribute's maximum, in value order. Exposed per attribute as views features.vocab_<name>.
with previous as (
    select entity, name, value, code from features.vocab_attribute
),

observed as (
    select distinct 'user' as entity, name, value from staging.user_attributes where kind = 'sparse'
    union
    select distinct 'item' as entity, name, value from staging.item_attributes where kind = 'sparse'
),

new_values as (
    select entity, name, value from observed anti join previous using (entity, name, value)
),

max_codes as (
    select entity, name, max(code) as max_code from previous group by entity, name
),

numbered as (
    select n.entity, n.name, n.value,
        (coalesce(m.max_code, 0) + row_number() over (partition by n.entity, n.name order by n.value))::INTEGER
            as code
    from new_values n
    left join max_codes m using (entity, name)
),

final as (
    select entity, name, value, code from previous
    union all
    select entity, name, value, code from numbered
)

select * from final
