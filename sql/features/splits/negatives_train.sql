-- partition: user_code, one per 10000000 rows of features.samples_train
-- incremental: rebuild user_code in features.changed_users unless features.negative_sampler changed
-- One row = one negative item for one training sample (user_code, pos): neg_rank 1..r, where
-- r = neg_ratio (1 in pairwise mode; point-wise reads them as label-0 rows, list-wise as the
-- r negatives of the sample's softmax).
-- Sampling: items are drawn from features.negative_sampler (the build's items, uniformly or with
-- weight n_train ^ neg_alpha, kept stable between builds), by random numbers hashed from
-- (seed, user_code, pos, slot, attempt): reproducible for a seed whatever the thread count. A
-- negative is never an item the user had interacted with up to and including the sample's position
-- (its target and history); items the user only meets later (e.g. its validation and test targets)
-- stay possible negatives, or the negatives would carry knowledge from the future. The r negatives
-- of a sample are distinct whenever r items are still unseen at that position.
-- One slot per negative (neg_rank = slot + 1), so no step gathers a sample's draws into a list:
-- 1. slot s draws once from its stratum, the part [s/r, (s+1)/r) of the sampler's cumulative
--    distribution. Draws of different slots then land on different items, except on the few items
--    whose interval crosses a stratum boundary (`straddlers`).
-- 2. a slot whose item the user had seen draws again from the whole distribution: up to 3
--    attempts, the first on an item neither seen nor held by the sample's first draws wins; then,
--    for the few slots still empty, up to 16 attempts, the first on an item neither seen nor held
--    by the sample's other slots wins.
--    Each item keeps its expected share: a first draw lands on item i with probability w_i / W
--    per sample (summed over the slots), and the fraction S of first draws the user had seen is
--    redrawn from the unseen items in proportion to w_i, so i is drawn r * w_i / (W * (1 - S))
--    times per sample on average, r times its weight among the unseen items (up to the rule that a
--    sample's negatives are distinct: a redraw avoids the items of the first draws; see
--    sql/README.md and bench/negatives.py for how far that moves the shares).
-- 3. two slots holding one item (two first draws on a straddler, or two redraws of one round):
--    the higher slot gives it up, and redraws in the next round (after round 3: step 4).
-- 4. the slots still empty (users who saw most of the popular items) take the user's unseen items
--    not held yet, walked in code order from a seeded offset; with fewer than r unseen items, each
--    of them gets a slot and the walk then starts again (repeats only then; no negatives when the
--    user had seen everything).
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

slots as (
    select unnest(range(ratio)) as slot from settings
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

-- items whose interval meets two strata or more (with a margin for rounding): the only items two
-- first draws of one sample can share
straddlers as (
    select item_code from intervals, settings
    where floor(lo * ratio - 1e-9) <> floor(hi * ratio + 1e-9)
),

-- per sample a 64-bit key from (seed, user_code, pos), chained through hash() so that the draws of
-- one sample are independent of each other and of other samples
sample_keys as materialized (
    select s.user_code, s.pos,
        hash(xor(hash(xor(hash(t.seed::UBIGINT), s.user_code::UBIGINT)), s.pos::UBIGINT)) as sample_key
    from features.samples_train s
    cross join settings t
    -- `in (...)`, not `=`: DuckDB estimates `user_code % n = p` like `user_code = p`, i.e. one
    -- user's rows (181 of 9.8M samples at 10M events), and then hashes the draws of a pass
    -- instead of the item buckets in the lookup below (10M events in 2 passes: 18.1 s with `=`,
    -- 7.7 s with `in`; rows identical). `in` gets the default estimate, a fifth of the rows.
    where s.user_code % getvariable('n_partitions') in (getvariable('partition'))
      and (not getvariable('incremental') or s.user_code in (select user_code from features.changed_users))
),

-- the user's events: an item is excluded from the negatives of the samples at the position of
-- the user's first event with it and later
seen as (
    select user_code, item_code, seq from features.events
    where user_code % getvariable('n_partitions') in (getvariable('partition'))  -- `in`: see sample_keys
      and (not getvariable('incremental') or user_code in (select user_code from features.changed_users))
),

-- the position of the user's first event with each item: one row per (user, item), so a draw
-- joins at most one row and one left join tells seen from unseen
first_seen as (
    select user_code, item_code, min(seq) as first_seq from seen group by user_code, item_code
),

-- round 1: one draw per slot, uniform in the slot's stratum (u < 1 whatever the rounding)
draws_1 as (
    select user_code, pos, sample_key, slot, u, floor(u * n_buckets)::BIGINT as bucket
    from (
        select k.user_code, k.pos, k.sample_key, s.slot,
            least(
                (s.slot + (hash(xor(k.sample_key, s.slot::UBIGINT)) >> 11)::DOUBLE / 9007199254740992.0) / t.ratio,
                0.9999999999999999
            ) as u
        from sample_keys k
        cross join slots s
        cross join settings t
    )
    cross join bucketing
),

drawn_1 as materialized (
    select d.user_code, d.pos, d.sample_key, d.slot, b.item_code,
        coalesce(f.first_seq <= d.pos, false) as was_seen
    from draws_1 d
    join buckets b on b.bucket = d.bucket and d.u >= b.lo and d.u < b.hi
    left join first_seen f on f.user_code = d.user_code and f.item_code = b.item_code
),

-- two first draws of one sample on one straddler: the higher slot gives it up
given_up_1 as (
    select distinct b.user_code, b.pos, b.sample_key, b.slot
    from (select * from drawn_1 where not was_seen and item_code in (select item_code from straddlers)) a
    join (select * from drawn_1 where not was_seen and item_code in (select item_code from straddlers)) b
        on a.user_code = b.user_code and a.pos = b.pos and a.item_code = b.item_code and a.slot < b.slot
),

-- `not materialized` here and on `kept`: both are read from drawn_1 where used, not copied
-- (at 10M events a copy is 38M rows, twice)
kept_1 as not materialized (
    select user_code, pos, slot, item_code from drawn_1
    anti join given_up_1 using (user_code, pos, slot)
    where not was_seen
),

-- the slots left empty by round 1: the item was seen, or given up
empty_1 as materialized (
    select user_code, pos, sample_key, slot from drawn_1 where was_seen
    union all
    select user_code, pos, sample_key, slot from given_up_1
),

-- round 2: each empty slot draws up to 3 times from the whole distribution (attempts 1..3)
draws_2 as (
    select user_code, pos, sample_key, slot, attempt, u, floor(u * n_buckets)::BIGINT as bucket
    from (
        select e.user_code, e.pos, e.sample_key, e.slot, a.attempt,
            (hash(xor(hash(xor(e.sample_key, e.slot::UBIGINT)), a.attempt::UBIGINT)) >> 11)::DOUBLE
                / 9007199254740992.0 as u
        from empty_1 e
        cross join (select unnest(range(1, 4)) as attempt) a
    )
    cross join bucketing
),

drawn_2 as materialized (
    select d.user_code, d.pos, d.sample_key, d.slot, d.attempt, b.item_code, b.lo, b.hi
    from draws_2 d
    join buckets b on b.bucket = d.bucket and d.u >= b.lo and d.u < b.hi
    left join first_seen f on f.user_code = d.user_code and f.item_code = b.item_code
    where not coalesce(f.first_seq <= d.pos, false)
),

-- the unseen attempts on an item a first draw of the sample holds. Only the slots whose strata
-- the item's interval meets (one, two for a straddler) can have drawn it in round 1, and their
-- first draws are recomputed from the sample key: no join with the round-1 rows, which would
-- read every sample's picks to find the few that collide
held_2 as (
    select distinct c.user_code, c.pos, c.slot, c.attempt
    from (
        select user_code, pos, slot, attempt, item_code, sample_key, other,
            least(
                (other + (hash(xor(sample_key, other::UBIGINT)) >> 11)::DOUBLE / 9007199254740992.0) / ratio,
                0.9999999999999999
            ) as u
        from (
            select d.*, t.ratio, unnest(range(
                greatest(floor(d.lo * t.ratio - 1e-9), 0)::BIGINT,
                least(floor(d.hi * t.ratio + 1e-9), t.ratio - 1)::BIGINT + 1
            )) as other
            from drawn_2 d
            cross join settings t
        )
    ) c
    cross join bucketing k
    join buckets b on b.bucket = floor(c.u * k.n_buckets)::BIGINT and c.u >= b.lo and c.u < b.hi
    where b.item_code = c.item_code and c.other <> c.slot
),

-- the first attempt on an item neither seen nor held by a first draw is the slot's pick
picks_2 as materialized (
    select d.user_code, d.pos, d.slot, arg_min(d.item_code, d.attempt) as item_code
    from drawn_2 d
    anti join held_2 h using (user_code, pos, slot, attempt)
    group by d.user_code, d.pos, d.slot
),

-- two slots' redraws on one item: the higher slot gives it up
given_up_2 as (
    select distinct b.user_code, b.pos, b.slot
    from picks_2 a
    join picks_2 b on a.user_code = b.user_code and a.pos = b.pos and a.item_code = b.item_code and a.slot < b.slot
),

kept_2 as materialized (
    select * from picks_2 anti join given_up_2 using (user_code, pos, slot)
),

empty_2 as materialized (
    select e.user_code, e.pos, e.sample_key, e.slot from empty_1 e
    anti join kept_2 p using (user_code, pos, slot)
),

-- what the samples of round 3 already hold
held_3 as (
    select h.user_code, h.pos, h.item_code
    from (
        select user_code, pos, item_code from kept_1
        union all
        select user_code, pos, item_code from kept_2
    ) h
    semi join (select distinct user_code, pos from empty_2) e using (user_code, pos)
),

-- the first events of round 3's users only: the joins below then hash a few rows, not every user's
seen_3 as materialized (
    select f.* from first_seen f semi join (select distinct user_code from empty_2) e using (user_code)
),

-- round 3: the slots still empty, attempts 4..19; the first on an item neither seen nor held wins
draws_3 as (
    select user_code, pos, slot, attempt, u, floor(u * n_buckets)::BIGINT as bucket
    from (
        select e.user_code, e.pos, e.slot, a.attempt,
            (hash(xor(hash(xor(e.sample_key, e.slot::UBIGINT)), a.attempt::UBIGINT)) >> 11)::DOUBLE
                / 9007199254740992.0 as u
        from empty_2 e
        cross join (select unnest(range(4, 20)) as attempt) a
    )
    cross join bucketing
),

picks_3 as materialized (
    select d.user_code, d.pos, d.slot, arg_min(b.item_code, d.attempt) as item_code
    from draws_3 d
    join buckets b on b.bucket = d.bucket and d.u >= b.lo and d.u < b.hi
    anti join seen_3 s on s.user_code = d.user_code and s.item_code = b.item_code and s.first_seq <= d.pos
    anti join held_3 h on h.user_code = d.user_code and h.pos = d.pos and h.item_code = b.item_code
    group by d.user_code, d.pos, d.slot
),

-- two redraws of round 3 on one item: the higher slot gives it up
kept_3 as materialized (
    select * from picks_3 p
    anti join (
        select b.user_code, b.pos, b.slot
        from picks_3 a
        join picks_3 b on a.user_code = b.user_code and a.pos = b.pos and a.item_code = b.item_code and a.slot < b.slot
    ) g using (user_code, pos, slot)
),

kept as not materialized (
    select user_code, pos, slot, item_code from kept_1
    union all
    select user_code, pos, slot, item_code from kept_2
    union all
    select user_code, pos, slot, item_code from kept_3
),

-- the samples with a slot still empty
short as materialized (
    select distinct user_code, pos, sample_key from empty_2 anti join kept_3 using (user_code, pos, slot)
),

-- fallback, for the short samples only: their unseen items in code order
unseen as (
    select user_code, pos, list(item_code order by item_code) as items
    from (
        select h.user_code, h.pos, p.item_code
        from short h
        cross join features.negative_sampler p
    ) pairs
    anti join seen_3 s on s.user_code = pairs.user_code and s.item_code = pairs.item_code
        and s.first_seq <= pairs.pos
    group by user_code, pos
),

-- a short sample's kept items and its empty slots (NULLs dropped from both lists)
short_slots as (
    select user_code, pos, sample_key,
        list_filter(list(item_code), lambda x: x is not null) as items,
        list_filter(list(case when item_code is null then slot end order by slot), lambda x: x is not null)
            as empty_slots
    from (
        select h.user_code, h.pos, h.sample_key, s.slot, p.item_code
        from short h
        cross join slots s
        left join kept p on p.user_code = h.user_code and p.pos = h.pos and p.slot = s.slot
    )
    group by user_code, pos, sample_key
),

-- the unseen items from a seeded offset (cycling: r steps when fewer than r are unseen)
walks as (
    select h.user_code, h.pos, h.items, h.empty_slots, len(u.items) as n_unseen,
        list_transform(range(greatest(len(u.items), t.ratio)), lambda step:
            u.items[(((hash(h.sample_key) % len(u.items)) + step) % len(u.items))::BIGINT + 1]) as walk
    from short_slots h
    join unseen u using (user_code, pos)
    cross join settings t  -- a join, not a subquery: Spark allows none inside a lambda
),

-- first the unseen items not held yet (one turn of the walk, in its order), then, for samples with
-- fewer than r unseen items, the walk again from its start: repeats come only after every unseen
-- item has a slot
fills as (
    select user_code, pos, empty_slots,
        list_concat(list_filter(walk[1:n_unseen], lambda x: not list_contains(items, x)), walk) as fill
    from walks
),

final as (
    select user_code, pos, (slot + 1)::INTEGER as neg_rank, item_code as neg_item_code from kept
    union all
    select user_code, pos, (empty_slots[i] + 1)::INTEGER as neg_rank, fill[i] as neg_item_code
    from (
        -- one unnest per SELECT, which both DuckDB and Spark accept
        select user_code, pos, empty_slots, fill, unnest(range(1, least(len(empty_slots), len(fill)) + 1)) as i
        from fills
    )
)

select * from final
