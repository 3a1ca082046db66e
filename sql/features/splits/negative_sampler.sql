-- self: (item_code INTEGER, weight DOUBLE, neg_sampler VARCHAR, neg_alpha DOUBLE)
-- One row = one item of the negative sampler (features.negatives_train), with its weight: 1
-- (uniform) or n_train ^ neg_alpha (popularity; 0 for items without training events, which are
-- never drawn but may top up a sample that rejection sampling leaves short), from
-- features.item_popularity. Stable across builds, like the vocabularies: the previous distribution
-- is kept while the sampler settings are unchanged and it stays within neg_refresh_drift (total
-- variation distance, 0..1) of the current one; otherwise the current one replaces it. Every night
-- moves popularity a little, and a changed distribution moves every draw of every user, so a stable
-- one is what lets an incremental build keep the negatives of users without new events (and equal
-- a full build). Items new since the last refresh are not drawn until the next one.
-- neg_refresh_drift = 0 refreshes on any change (the distribution is always the current one).
with previous as (
    select item_code, weight, neg_sampler, neg_alpha from features.negative_sampler
),

current as (
    select item_code,
        case when getvariable('neg_sampler') = 'uniform' then 1.0
            when n_train > 0 then pow(n_train, getvariable('neg_alpha'))
            else 0.0
        end as weight,
        getvariable('neg_sampler') as neg_sampler,
        getvariable('neg_alpha')::DOUBLE as neg_alpha
    from features.item_popularity
),

-- total variation distance between the two normalised distributions (items missing on one side
-- have probability 0 there)
drift as (
    select 0.5 * sum(abs(coalesce(c.weight / ct.total, 0) - coalesce(p.weight / pt.total, 0))) as distance
    from current c
    full outer join previous p using (item_code)
    cross join (select nullif(sum(weight), 0) as total from current) ct
    cross join (select nullif(sum(weight), 0) as total from previous) pt
),

keep as (
    select
        (select count(*) from previous) > 0
        and (select count(*) from current) > 0
        and (select bool_and(neg_sampler = getvariable('neg_sampler')
                and neg_alpha = getvariable('neg_alpha')::DOUBLE) from previous)
        and coalesce((select distance from drift) <= getvariable('neg_refresh_drift'), false) as previous_kept
),

final as (
    select item_code, weight, neg_sampler, neg_alpha from previous where (select previous_kept from keep)
    union all
    select item_code, weight, neg_sampler, neg_alpha from current where not (select previous_kept from keep)
)

select * from final
