-- Must return no rows: a vocabulary value with two codes, or a code given to two values.
with codes as (
    select 'vocab_user_id' as vocab, '' as attribute, value, code from features.vocab_user_id
    union all select 'vocab_item_id', '', value, code from features.vocab_item_id
    union all select 'vocab_tag', '', value, code from features.vocab_tag
    union all select 'vocab_attribute', entity || '.' || name, value, code from features.vocab_attribute
),

duplicate_values as (
    select vocab, attribute, value, count(*) as n from codes group by all having count(*) > 1
),

duplicate_codes as (
    select vocab, attribute, code::VARCHAR as value, count(*) as n from codes group by vocab, attribute, code
    having count(*) > 1
),

final as (
    select 'duplicate value' as problem, * from duplicate_values
    union all
    select 'duplicate code', * from duplicate_codes
)

select * from final
