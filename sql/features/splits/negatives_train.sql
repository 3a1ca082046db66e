-- partition: user_code, one per 10000000 rows of features.samples_train
-- incremental: rebuild user_code in features.changed_users unless features.negative_sampler changed
-- One row = one negative item for one training sample (user_code, pos): neg_rank 1..r, where
-- r = neg_ratio (1 in pairwise mode; point-wise reads them as label-0 rows, list-wise as the
-- r negatives of the sample's softmax).
-- Sampling: items are drawn from features.negative_sampler (the build's items, uniformly or with
-- weight n_train ^ neg_alpha, kept stable between builds), by random numbers hashed from
-- (seed, user_code, pos, draw): reproducible for a seed whatever the thread count. A negative is never an item the user had
-- interacted with up to and including the sample's position (its target and history); items the
-- user only meets later (e.g. its validation and test targets) stay possible negatives, or the
-- negatives would carry knowledge from the future. The r negatives of a sample are distinct
-- whenever r items are still unseen at that position.
-- Rejection sampling in two rounds: r + r/2 + 2 draws per sample, then 8r more draws for the few
-- samples still short (users who saw many popular items); the samples still short after that
-- are topped up uniformly from the sampler's items unseen at that position, walked from a seeded offset
-- (with repeats only when fewer than r are unseen; none when the user had seen everything).
-- Built in passes over users (user_code % n_partitions = partition; see the header and
-- sql/README.md): a sample's negatives depend only on its own user's samples and events, so
-- the passes together give exactly the one-pass result while each holds 1/n of the state.
-- For the same reason an incremental build recomputes only the users of features.changed_users
-- and keeps the others' rows, unless the sampler's distribution changed (then every user's).
with

settings as (
    select
        (case when getvariable('neg_mode') = 'pairwise' then 1 else getvariable('neg_ratio') end)::INTEGER as ratio,
        getvariable('seed')::BIGINT as seed
),

rounds as (
    select ratio + ratio // 2 + 2 as first_draws, 8 * ratio as second_draws from settings
),

-- the sampling distribution over items
weights as (
    select item_code, weight as w from features.negative_sampler where weight > 0
),

cumulative as (
    select item_code, sum(w) over (order by item_code rows between unbounded preceding and current row) as upto
    from weights
),

-- item k owns [lo, hi) of [0, 1); consecutive items share their boundary exactly, the last ends at 1
intervals as (
    select item_code,
        coalesce(lag(upto) over (order by item_code), 0) / total as lo,
        case when upto = total then 1.0 else upto / total end as hi
    from cumulative, (select max(upto) as total from cumulative)
),

-- [0, 1) cut into n_buckets equal buckets (a power of two >= 4 x items, so u * n_buckets is exact
-- and a bucket holds about one item); an item is listed under every bucket it overlaps, so a
-- draw finds its item by an equality join on its bucket plus a range check (faster than ASOF)
bucketing as (
    select pow(2, greatest(16, ceil(log2(4 * count(*) + 1))))::DOUBLE as n_buckets from intervals
),

buckets as (
    select i.item_code, i.lo, i.hi,
        unnest(range(floor(i.lo * b.n_buckets)::BIGINT, least(floor(i.hi * b.n_buckets), b.n_buckets - 1)::BIGINT + 1))
            as bucket
    from intervals i, bucketing b
),

-- per sample a 64-bit key from (seed, user_code, pos), chained through hash() so that the draws of
-- one sample are independent of each other and of other samples
sample_keys as materialized (
    select s.user_code, s.pos,
        hash(xor(hash(xor(hash(t.seed::UBIGINT), s.user_code::UBIGINT)), s.pos::UBIGINT)) as sample_key
    from features.samples_train s
    cross join settings t
    -- `in (...)`, not `=`: DuckDB estimates `user_code % n = p` like `user_code = p`, i.e. one
    -- user's rows (181 of 9.8M samples at 10M events), and then hashes the ~40M draws of a pass
    -- instead of the item buckets in the lookup below (10M events in 2 passes: 18.1 s with `=`,
    -- 7.7 s with `in`; rows identical). `in` gets the default estimate, a fifth of the rows.
    where s.user_code % getvariable('n_partitions') in (getvariable('partition'))
      and (not getvariable('incremental') or s.user_code in (select user_code from features.changed_users))
),

-- the user's events: an item is excluded from the negatives of the samples at the position of
-- the user's first event with it and later. The anti joins below probe these rows directly (an
-- event of the item at seq <= pos), with no group-by into first positions before: the same rows,
-- 7-12 % less CPU at 1M events and the same on a repeat-heavy log (bench/RESULTS.md).
seen as (
    select user_code, item_code, seq from features.events
    where user_code % getvariable('n_partitions') in (getvariable('partition'))  -- `in`: see sample_keys
      and (not getvariable('incremental') or user_code in (select user_code from features.changed_users))
),

-- round 1: every sample
draws_1 as (
    select user_code, pos, draw, u, floor(u * n_buckets)::BIGINT as bucket
    from (
        select k.user_code, k.pos, d.draw,
            (hash(xor(k.sample_key, d.draw::UBIGINT)) >> 11)::DOUBLE / 9007199254740992.0 as u  -- uniform in [0, 1)
        from sample_keys k
        cross join (select unnest(range(1, first_draws + 1)) as draw from rounds) d
    )
    cross join bucketing
),

-- unseen draws of a sample in draw order, first occurrences only
picks_1 as materialized (
    select user_code, pos, list_filter(items, lambda x, i: list_position(items, x) = i) as items
    from (
        select d.user_code, d.pos,
            -- in draw order, without an ordered aggregate: sort (draw, item) packed into one BIGINT
            list_transform(
                list_sort(list(d.draw::BIGINT * 4294967296 + b.item_code)), lambda x: (x % 4294967296)::INTEGER
            ) as items
        from draws_1 d
        join buckets b on b.bucket = d.bucket and d.u >= b.lo and d.u < b.hi
        anti join seen s on s.user_code = d.user_code and s.item_code = b.item_code and s.seq <= d.pos
        group by d.user_code, d.pos
    )
),

short_1 as materialized (
    select k.user_code, k.pos, k.sample_key, coalesce(p.items, []) as items
    from sample_keys k
    left join picks_1 p using (user_code, pos)
    where len(coalesce(p.items, [])) < (select ratio from settings)
),

-- round 2: the short samples only, with new draw numbers
draws_2 as (
    select user_code, pos, draw, u, floor(u * n_buckets)::BIGINT as bucket
    from (
        select k.user_code, k.pos, d.draw,
            (hash(xor(k.sample_key, d.draw::UBIGINT)) >> 11)::DOUBLE / 9007199254740992.0 as u
        from short_1 k
        cross join (select unnest(range(first_draws + 1, first_draws + second_draws + 1)) as draw from rounds) d
    )
    cross join bucketing
),

picks_2 as materialized (
    select s.user_code, s.pos, s.sample_key,
        list_filter(s.items || coalesce(n.items, []),
            lambda x, i: list_position(s.items || coalesce(n.items, []), x) = i) as items
    from short_1 s
    left join (
        select d.user_code, d.pos,
            -- in draw order, without an ordered aggregate: sort (draw, item) packed into one BIGINT
            list_transform(
                list_sort(list(d.draw::BIGINT * 4294967296 + b.item_code)), lambda x: (x % 4294967296)::INTEGER
            ) as items
        from draws_2 d
        join buckets b on b.bucket = d.bucket and d.u >= b.lo and d.u < b.hi
        anti join seen s on s.user_code = d.user_code and s.item_code = b.item_code and s.seq <= d.pos
        group by d.user_code, d.pos
    ) n using (user_code, pos)
),

-- fallback for the samples still short: walk the user's unseen items (in code order) from a
-- seeded offset
short_2 as (
    select * from picks_2 where len(items) < (select ratio from settings)
),

unseen as (
    select user_code, pos, list(item_code order by item_code) as items
    from (
        select u.user_code, u.pos, p.item_code
        from (select distinct user_code, pos from short_2) u
        cross join features.negative_sampler p
    ) pairs
    anti join seen s on s.user_code = pairs.user_code and s.item_code = pairs.item_code and s.seq <= pairs.pos
    group by user_code, pos
),

walked as (
    select s.user_code, s.pos,
        case when len(w.items) >= t.ratio
            -- keep what was drawn, add the walk's items not already there
            then list_filter(s.items || w.walk, lambda x, i: list_position(s.items || w.walk, x) = i)
            -- fewer unseen items than r: cycle through them
            else w.walk
        end as items
    from short_2 s
    join (
        select s2.user_code, s2.pos, u.items,
            list_transform(range(t2.ratio), lambda step:
                u.items[(((hash(s2.sample_key) % len(u.items)) + step) % len(u.items))::BIGINT + 1]) as walk
        from short_2 s2
        join unseen u using (user_code, pos)
        cross join settings t2  -- a join, not a subquery: Spark allows none inside a lambda
    ) w using (user_code, pos)
    cross join settings t
),

picked as (
    select user_code, pos, items from picks_1 where len(items) >= (select ratio from settings)
    union all
    select user_code, pos, items from picks_2 where len(items) >= (select ratio from settings)
    union all
    select user_code, pos, items from walked
),

-- one row per kept negative: its rank, and the item at that rank (one unnest per SELECT, which
-- both DuckDB and Spark accept)
final as (
    select user_code, pos, neg_rank::INTEGER as neg_rank, items[neg_rank] as neg_item_code
    from (
        select user_code, pos, items,
            unnest(range(1, least(len(items), (select ratio from settings)) + 1)) as neg_rank
        from picked
    )
)

select * from final
