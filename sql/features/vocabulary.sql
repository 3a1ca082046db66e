-- self: (kind VARCHAR, entity VARCHAR, name VARCHAR, value VARCHAR, code INTEGER)
-- seed: seeds/vocabulary.sql
-- One row = one value of one vocabulary and its integer code (1..; 0 is padding/unknown). Every
-- stable vocabulary of the store is defined here, once:
--   kind 'id'        entity 'user' / 'item', name 'user_id' / 'item_id': the raw ids of staging.interactions
--   kind 'tag'       entity 'item', name 'tag': item tags (e.g. genres)
--   kind 'attribute' entity 'user' / 'item', name = the attribute: values of sparse (categorical) attributes
-- Codes are numbered per (kind, entity, name) and stable across builds: the rows of this table's
-- previous version are kept as they are (values no longer in the data keep their codes too); values
-- seen for the first time get codes after that vocabulary's maximum, in value order.
-- The tables features.vocab_user_id, vocab_item_id, vocab_tag and vocab_attribute are cut from it.
with previous as (
    select kind, entity, name, value, code from features.vocabulary
),

observed as (
    select distinct 'id' as kind, 'user' as entity, 'user_id' as name, user_id as value
    from staging.interactions
    union all
    select distinct 'id', 'item', 'item_id', item_id from staging.interactions
    union all
    select distinct 'tag', 'item', 'tag', tag from raw.item_tags
    where tag is not null
      and (getvariable('upto_batch_seq') is null or batch_seq <= getvariable('upto_batch_seq'))
    union all
    select distinct 'attribute', entity, name, value from staging.attributes where kind = 'sparse'
),

new_values as (
    select kind, entity, name, value from observed anti join previous using (kind, entity, name, value)
),

max_codes as (
    select kind, entity, name, max(code) as max_code from previous group by kind, entity, name
),

numbered as (
    select n.kind, n.entity, n.name, n.value,
        (coalesce(m.max_code, 0) + row_number() over (partition by n.kind, n.entity, n.name order by n.value))::INTEGER
            as code
    from new_values n
    left join max_codes m using (kind, entity, name)
),

final as (
    select kind, entity, name, value, code from previous
    union all
    select kind, entity, name, value, code from numbered
)

select * from final
