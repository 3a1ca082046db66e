-- One row = one dense feature of one user, scaled to [0, 1] (the users of features.dense_values):
-- its numeric attributes and event_count.
select code as user_code, name, value
from features.dense_values
where entity = 'user'
