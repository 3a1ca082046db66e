-- self: (value VARCHAR, code INTEGER)
-- One row = one user id and its integer code (1..; 0 is padding/unknown). Stable across builds:
-- the codes of this table's previous version are kept as they are (ids that are no longer in the
-- data keep theirs too); ids seen for the first time get codes after the current maximum, in id order.
with previous as (
    select value, code from features.vocab_user_id
),

observed as (
    select distinct user_id as value from staging.interactions
),

new_values as (
    select value from observed anti join previous using (value)
),

numbered as (
    select value,
        ((select coalesce(max(code), 0) from previous) + row_number() over (order by value))::INTEGER as code
    from new_values
),

final as (
    select value, code from previous
    union all
    select value, code from numbered
)

select * from final
