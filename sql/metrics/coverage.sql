-- Catalogue coverage@k: distinct items in the top-k lists / catalogue size.
with final as (
    select l.source, l.model_run_id, l."index", 'coverage' as metric, c.k,
        count(distinct l.item_code) / (select count(*) from metrics.catalogue) as value,
        count(distinct l.user_code) as n_users
    from metrics.lists l
    join metrics.cutoffs c on l.rank <= c.k
    group by all
)

select * from final
