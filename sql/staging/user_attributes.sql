-- One row = the current value of one attribute of one user (the users of staging.attributes).
select id as user_id, name, value, kind
from staging.attributes
where entity = 'user'
