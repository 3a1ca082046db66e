-- One row = the current code of one sparse attribute of one user (the users of
-- features.sparse_values; codes of features.vocab_attribute; no row = 0, unknown).
select code as user_code, name, value_code as code
from features.sparse_values
where entity = 'user'
