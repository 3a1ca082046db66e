-- Must return no rows: a sample whose pos is outside its user's history, whose target is not the
-- item at that position, or whose position does not match its split (test = last, valid =
-- second-to-last). Set-wise: positions and splits are checked per sample against the history
-- length (features.user_history, lists not read); that each (pos, target) is the user's event at
-- seq = pos is checked per user, comparing the multiset of the user's samples with that of their
-- events after the first (every event but the first is exactly one sample's target) by count and a
-- sum of 64-bit hashes, so no sample is joined to its event row by row.
with samples as (
    select 'train' as split, user_code, target_item_code, pos from features.samples_train
    union all select 'valid', user_code, target_item_code, pos from features.samples_valid
    union all select 'test', user_code, target_item_code, pos from features.samples_test
),

lengths as (
    select user_code, n_events from features.user_history
),

misplaced as (
    select s.split, s.user_code, s.target_item_code, s.pos, h.n_events, 'position or split' as problem
    from samples s
    left join lengths h using (user_code)
    where h.n_events is null
        or s.pos < 1 or s.pos >= h.n_events
        or (s.split = 'test' and s.pos <> h.n_events - 1)
        or (s.split = 'valid' and s.pos <> h.n_events - 2)
        or (s.split = 'train' and s.pos >= h.n_events - 1)
),

sampled as (
    select user_code, count(*) as n, sum(hash(xor(hash(pos::UBIGINT), target_item_code::UBIGINT))) as fingerprint
    from samples
    group by user_code
),

targets as (
    select user_code, count(*) as n, sum(hash(xor(hash(seq::UBIGINT), item_code::UBIGINT))) as fingerprint
    from features.events
    where seq >= 1 and user_code in (select user_code from sampled)
    group by user_code
),

mismatched as (
    select null as split, s.user_code, null::INTEGER as target_item_code, null::INTEGER as pos,
        t.n as n_events, 'targets are not the events at their positions' as problem
    from sampled s
    left join targets t using (user_code)
    where t.n is distinct from s.n or t.fingerprint is distinct from s.fingerprint
),

final as (
    select * from misplaced
    union all
    select * from mismatched
)

select * from final
