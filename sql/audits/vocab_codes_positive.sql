-- Must return no rows: a vocabulary code below 1 (0 is reserved for padding/unknown) or a NULL value.
with codes as (
    select 'vocab_user_id' as vocab, value, code from features.vocab_user_id
    union all select 'vocab_item_id', value, code from features.vocab_item_id
    union all select 'vocab_tag', value, code from features.vocab_tag
    union all select 'vocab_attribute', value, code from features.vocab_attribute
),

final as (
    select * from codes where code is null or code < 1 or value is null
)

select * from final
