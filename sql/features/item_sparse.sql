-- One row = the current code of one sparse attribute of one item (the items of
-- features.sparse_values; codes of features.vocab_attribute; no row = 0, unknown).
select code as item_code, name, value_code as code
from features.sparse_values
where entity = 'item'
