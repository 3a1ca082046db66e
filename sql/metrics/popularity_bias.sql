-- Popularity bias@k: the mean popularity percentile (metrics.catalogue) of the recommended items,
-- over every slot of the top-k lists. 0.5 = like a uniform draw from the catalogue, 1 = only the
-- most popular item.
with final as (
    select l.source, l.model_run_id, l."index", 'popularity_percentile' as metric, c.k,
        avg(i.popularity_percentile) as value,
        count(distinct l.user_code) as n_users
    from metrics.lists l
    join metrics.cutoffs c on l.rank <= c.k
    join metrics.catalogue i using (item_code)
    group by all
)

select * from final
