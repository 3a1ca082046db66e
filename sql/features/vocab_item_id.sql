-- One row = one item id and its integer code (1..; 0 is padding/unknown), stable across builds:
-- the item ids of features.vocabulary.
select value, code
from features.vocabulary
where kind = 'id' and entity = 'item'
