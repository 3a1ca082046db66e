-- The first version of features.vocabulary in a store built before it existed: the codes of the
-- four vocabulary tables that each used to number their values themselves, so that upgrading keeps
-- every code. Read once, when features.vocabulary does not exist yet and these tables do.
select 'id' as kind, 'user' as entity, 'user_id' as name, value, code from features.vocab_user_id
union all
select 'id', 'item', 'item_id', value, code from features.vocab_item_id
union all
select 'tag', 'item', 'tag', value, code from features.vocab_tag
union all
select 'attribute', entity, name, value, code from features.vocab_attribute
