-- Must return no rows: a user whose history list disagrees with features.events, which the other
-- audits read positions from. Element k + 1 of item_codes and ts_list must be the user's event at
-- seq k, and n_events their number. Compared per user, set-wise: the multiset of (seq, item, ts)
-- of both sides is summarised by its count and the sum of 64-bit hashes of its elements (a changed,
-- moved, missing or extra element changes the sum, barring a 2^-64 coincidence), so the lists are
-- unnested once and nothing is joined row by row. The element hash chains one-integer hash() calls
-- (as negatives_train does), which the Spark build computes too.
with lengths as (
    select user_code, n_events, len(item_codes) as n_items, len(ts_list) as n_ts
    from features.user_history
),

listed as (
    select user_code,
        sum(hash(xor(hash(xor(hash(seq::UBIGINT), item_codes[seq + 1]::UBIGINT)), hash(epoch_us(ts_list[seq + 1])))))
            as fingerprint
    from (
        select user_code, item_codes, ts_list, unnest(range(len(item_codes))) as seq
        from features.user_history
    )
    group by user_code
),

events as (
    select user_code, count(*) as n,
        sum(hash(xor(hash(xor(hash(seq::UBIGINT), item_code::UBIGINT)), hash(epoch_us(ts))))) as fingerprint
    from features.events
    group by user_code
),

final as (
    select coalesce(l.user_code, e.user_code) as user_code, l.n_events, l.n_items, l.n_ts, e.n as events
    from lengths l
    full outer join events e using (user_code)
    left join listed x on x.user_code = l.user_code
    where l.n_events is distinct from e.n or l.n_items is distinct from e.n or l.n_ts is distinct from e.n
        or x.fingerprint is distinct from e.fingerprint
)

select * from final
