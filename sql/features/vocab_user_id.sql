-- One row = one user id and its integer code (1..; 0 is padding/unknown), stable across builds:
-- the user ids of features.vocabulary.
select value, code
from features.vocabulary
where kind = 'id' and entity = 'user'
