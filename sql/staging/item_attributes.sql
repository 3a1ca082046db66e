-- One row = the current value of one attribute of one item (the items of staging.attributes).
select id as item_id, name, value, kind
from staging.attributes
where entity = 'item'
