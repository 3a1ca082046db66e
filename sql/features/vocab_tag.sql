-- One row = one item tag (e.g. a genre) and its integer code (1..; 0 is padding), stable across
-- builds: the tags of features.vocabulary.
select value, code
from features.vocabulary
where kind = 'tag'
