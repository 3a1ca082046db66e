-- One row = one dense feature of one item, scaled to [0, 1] (the items of features.dense_values):
-- its numeric attributes and popularity.
select code as item_code, name, value
from features.dense_values
where entity = 'item'
