-- Novelty@k: the mean self-information -log2 p(item) of the recommended items (p from training
-- counts, metrics.catalogue), over every slot of the top-k lists. Higher = less popular items.
with final as (
    select l.source, l.model_run_id, l."index", 'novelty' as metric, c.k,
        avg(i.self_information) as value,
        count(distinct l.user_code) as n_users
    from metrics.lists l
    join metrics.cutoffs c on l.rank <= c.k
    join metrics.catalogue i using (item_code)
    group by all
)

select * from final
