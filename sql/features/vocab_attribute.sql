-- One row = one value of one sparse (categorical) attribute of users or items, and its code
-- (1.. per entity + name; 0 is unknown), stable across builds: the attributes of features.vocabulary.
-- Exposed per attribute as views features.vocab_<name>.
select entity, name, value, code
from features.vocabulary
where kind = 'attribute'
