-- Popularity bias and novelty@k, means over every slot of the top-k lists of a property of the
-- recommended item (metrics.catalogue):
-- popularity_percentile = its popularity percentile (0.5 = what a uniform draw from the catalogue
-- gives, 1 = only the most popular item); novelty = its self-information -log2 p(item) in bits
-- (p from training counts; higher = less popular items).
with slots as (
    select l.source, l.model_run_id, l."index", c.k, l.user_code, i.popularity_percentile, i.self_information
    from metrics.lists l
    join metrics.cutoffs c on l.rank <= c.k
    join metrics.catalogue i using (item_code)
),

final as (
    select source, model_run_id, "index", metric, k, value, n_users
    from (
        -- means of exact decimals: the same bits whatever order the rows (and DuckDB's threads) add
        -- them in, where a mean of doubles moves in its last digits
        select source, model_run_id, "index", k,
            avg(popularity_percentile::DECIMAL(38, 18)) as popularity_percentile,
            avg(self_information::DECIMAL(38, 18)) as novelty,
            count(distinct user_code) as n_users
        from slots
        group by all
    )
    unpivot (value for metric in (popularity_percentile, novelty))
)

select * from final
