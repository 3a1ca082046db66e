"""Incremental scoring: rescore only the users whose top-k can have changed since the last run.

A user's list is a function of the model run, the item vectors and index settings (the catalogue),
k, the seen filter, the user's prepared vector and the items the user has seen. The first four are
one key per run (`scoring_key`). The vector is a function of the model run and the user-tower
inputs: `embeddings.encode_current_users` computes each user in a batch whose shape only the
user's own history sets, so the vector does not depend on which users are encoded with it. The
last two are compared user by user: the inputs by a hash (`input_digests`), the seen items by count
and a position-weighted hash of the whole history. A user equal on all of them gets the previous
run's vector and rows again, which is what encoding and rescoring would compute; only the others
are encoded and rescored. A different key (a new model run, new item features, another k or index,
another thread count...) rescores everyone.

That rests on two assumptions: a user's vector depends on nothing but its inputs, and its list on
nothing but its vector and seen items, not on which other users are scored beside them. Annoy
rescores its candidates row by row; the exact index multiplies fixed-shape blocks
(`ranking.exact.VectorScorer`). Both are checked every run, before anything is kept (`score_run`):
a sample of the users that would be kept is encoded again and compared with their stored vectors
bit for bit, and their lists are computed again and compared with their stored digests
(`list_digest`); one difference and everyone is rescored.

The state of the last run lives beside its embeddings, in `models/<model_run_id>/`:
`score_state.parquet` (code, n_seen, seen_hash, digest, inputs) and `score_state.json` (run_id, key),
written after the run's recommendations are committed and removed when a run starts, so a run
killed at any point leaves no state and the next one rescores everyone.

Evaluation asks annoy the same sampled users every night. `reuse_lists` keeps annoy's answers
(`annoy_answers_<name>.parquet` in the same folder, the index's identity inside) and answers a row
from them when its vector and excluded items are bit-for-bit the same, with the same re-check.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.ranking.embeddings import STABLE_ROWS, stable_batches
from rechub_store.ranking.exact import Seen
from rechub_store.warehouse import table_exists

STATE_JSON = "score_state.json"
STATE_PARQUET = "score_state.parquet"
EMBEDDINGS = "user_embeddings.parquet"
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio)


def scoring_key(item_vecs: np.ndarray, settings: dict[str, Any]) -> str:
    """One hash of what every user's list depends on besides the user: the item vectors (hence
    the model run and the catalogue) and the scoring settings (k, index, seen filter, annoy...)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(str(item_vecs.shape).encode())
    digest.update(np.ascontiguousarray(item_vecs).tobytes())
    return digest.hexdigest()[:32]


def history_state(store: FeatureStore, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_seen, seen_hash) per user: history length and the `rows_digest` of the whole history
    (sum_j code_j * B^(j+1) mod 2^64)."""
    u = np.asarray(users, dtype=np.int64)
    lens = store.history_length(u).astype(np.int64)
    return lens, rows_digest(Seen(*store.seen(u, lens)), len(u))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (uint64, arithmetic mod 2^64): nearby inputs land far apart."""
    with np.errstate(over="ignore"):
        x = x + _HASH_BASE
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _bits(values: np.ndarray) -> np.ndarray:
    """The values' bit patterns as uint64, one per element (floats by the bits of their float64)."""
    wide = values.astype(np.float64) if values.dtype.kind == "f" else values.astype(np.int64)
    return np.ascontiguousarray(wide).view(np.uint64)


def input_digests(
    store: FeatureStore, users: np.ndarray, max_seq_len: int, reads: tuple[str, ...]
) -> np.ndarray:
    """uint64 per user: a hash of the user-tower inputs `reads` (`embeddings.user_tower_reads`;
    empty = every input) of its whole current history, in the form `embeddings.encode_current_users`
    feeds the model (the window at its width, sparse codes, the bits of dense values). Equal digests,
    the same model and the same shapes of batch mean the same vector, so an incremental run encodes
    only the users whose digest changed."""
    u = np.asarray(users, dtype=np.int64)
    out = np.zeros(len(u), dtype=np.uint64)
    for part, batch in stable_batches(store, u, max_seq_len, rows=8192, pad=False):
        total = np.zeros(len(part), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for slot, name in enumerate(sorted(reads or batch)):
                values = _bits(batch[name].numpy()[: len(part)].reshape(len(part), -1))
                # each (input, column) salts its values, so equal values in other places differ
                column = np.arange(values.shape[1], dtype=np.uint64)
                salt = _mix((np.uint64(slot + 1) << np.uint64(32)) + column)
                total += _mix(values ^ salt).sum(axis=1, dtype=np.uint64)
        out[part] = total
    return out


def list_digest(codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One uint64 per row of a top-k result: a position-weighted hash of its item codes and the
    bits of its float32 scores, so two lists have the same digest only if they are equal (up to
    hash collisions) down to the last bit of every score."""
    codes = np.asarray(codes, dtype=np.int64).astype(np.uint64)
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32).astype(np.uint64)
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 on purpose
        weights = np.power(_HASH_BASE, np.arange(1, codes.shape[1] + 1, dtype=np.uint64))
        return (((codes << np.uint64(32)) | bits) * weights).sum(axis=1, dtype=np.uint64)


@dataclass
class Previous:
    """The last scoring run's per-user state, indexed by user code."""

    run_id: str
    vectors: np.ndarray  # [max_code + 1, D]
    has: np.ndarray  # bool [max_code + 1]: the user was scored
    n_seen: np.ndarray
    seen_hash: np.ndarray
    digest: np.ndarray  # uint64 [max_code + 1]: `list_digest` of each scored user's list
    inputs: np.ndarray  # uint64 [max_code + 1]: `input_digests` of each scored user

    def same_history(self, users: np.ndarray, n_seen: np.ndarray, seen_hash: np.ndarray) -> np.ndarray:
        """Mask of the users scored last run whose seen items are the same now."""
        u = np.asarray(users, dtype=np.int64)
        inside = u < len(self.has)
        idx = np.where(inside, u, 0)
        return inside & self.has[idx] & (self.n_seen[idx] == n_seen) & (self.seen_hash[idx] == seen_hash)

    def same_inputs(
        self, users: np.ndarray, n_seen: np.ndarray, seen_hash: np.ndarray, inputs: np.ndarray
    ) -> np.ndarray:
        """Mask of the users whose seen items and user-tower inputs equal the previous run's."""
        same = self.same_history(users, n_seen, seen_hash)
        idx = np.where(same, np.asarray(users, dtype=np.int64), 0)
        return same & (self.inputs[idx] == inputs)


def forget(model_dir: Path) -> None:
    """A run is starting: the state no longer describes `recommendations` until it is written again."""
    (model_dir / STATE_JSON).unlink(missing_ok=True)


def load_previous(con: duckdb.DuckDBPyConnection, model_dir: Path, key: str) -> tuple[Previous | None, str]:
    """The previous run's state when it is valid for `key` and still the working copy's
    `recommendations`, else (None, why not)."""
    path = model_dir / STATE_JSON
    if not path.is_file():
        return None, "no previous scoring state for this model run"
    state = json.loads(path.read_text(encoding="utf-8"))
    if state.get("key") != key:
        return None, "item vectors or scoring settings changed"
    if not table_exists(con, "main.recommendations"):
        return None, "no recommendations table"
    runs = [r[0] for r in con.execute("SELECT DISTINCT run_id FROM main.recommendations").fetchall()]
    if runs != [state.get("run_id")]:
        return None, "recommendations hold another run than the scoring state"
    emb = pq.read_table(model_dir / EMBEDDINGS)
    st = pq.read_table(model_dir / STATE_PARQUET)
    if "inputs" not in st.column_names:
        return None, "scoring state written by an older version (no input digests)"
    codes = emb.column("code").to_numpy().astype(np.int64)
    size = int(max(codes.max(initial=0), st.column("code").to_numpy().max(initial=0))) + 1
    dim = emb.schema.field("vector").type.list_size
    vectors = np.zeros((size, dim), dtype=np.float32)
    flat = emb.column("vector").combine_chunks().flatten().to_numpy()
    vectors[codes] = flat.reshape(len(codes), dim)
    has = np.zeros(size, dtype=bool)
    n_seen = np.full(size, -1, dtype=np.int64)
    seen_hash = np.zeros(size, dtype=np.uint64)
    digest = np.zeros(size, dtype=np.uint64)
    inputs = np.zeros(size, dtype=np.uint64)
    sc = st.column("code").to_numpy().astype(np.int64)
    has[sc] = True
    has &= np.isin(np.arange(size), codes)
    n_seen[sc] = st.column("n_seen").to_numpy()
    seen_hash[sc] = st.column("seen_hash").to_numpy()
    digest[sc] = st.column("digest").to_numpy()
    inputs[sc] = st.column("inputs").to_numpy()
    previous = Previous(state["run_id"], vectors, has, n_seen, seen_hash, digest, inputs)
    return previous, "previous run " + state["run_id"]


def save_state(
    model_dir: Path,
    run_id: str,
    key: str,
    users: np.ndarray,
    n_seen: np.ndarray,
    seen_hash: np.ndarray,
    digest: np.ndarray,
    inputs: np.ndarray,
) -> None:
    """Write the run's state (the Parquet file first, the JSON that validates it last)."""
    table = pa.table(
        {
            "code": pa.array(np.asarray(users, dtype=np.int32)),
            "n_seen": pa.array(np.asarray(n_seen, dtype=np.int64)),
            "seen_hash": pa.array(np.asarray(seen_hash, dtype=np.uint64)),
            "digest": pa.array(np.asarray(digest, dtype=np.uint64)),
            "inputs": pa.array(np.asarray(inputs, dtype=np.uint64)),
        }
    )
    tmp = model_dir / (STATE_PARQUET + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(model_dir / STATE_PARQUET)
    tmp = model_dir / (STATE_JSON + ".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "key": key}), encoding="utf-8")
    tmp.replace(model_dir / STATE_JSON)


def settings_of(model_run_id: str, k: int, index: str, exclude_seen: bool, annoy: Any, tuning: Any) -> dict:
    """The per-run settings that enter the key (annoy's only when annoy serves the lists), and how
    user vectors are computed: torch's thread count and the encoding's batch rows, which may
    change how BLAS splits a block (and, for exact, the score blocks)."""
    out: dict[str, Any] = {
        "model_run_id": model_run_id,
        "k": k,
        "index": index,
        "exclude_seen": exclude_seen,
        "torch_threads": torch.get_num_threads(),
        "encode_rows": STABLE_ROWS,
    }
    if index == "annoy":
        out["annoy"] = asdict(annoy) if annoy is not None else None
        out["tuning"] = None if tuning is None else (tuning.n_trees, tuning.search_k, tuning.metric)
    return out


def rows_digest(seen: Seen | None, n_rows: int) -> np.ndarray:
    """uint64 per row: a position-weighted hash of the row's excluded item codes (0: none)."""
    out = np.zeros(n_rows, dtype=np.uint64)
    if seen is None or not len(seen.indices):
        return out
    counts = seen.counts()
    firsts = seen.indptr[:-1]
    pos = np.arange(len(seen.indices), dtype=np.int64) - np.repeat(firsts, counts)
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 on purpose
        weighted = seen.indices.astype(np.uint64) * np.power(_HASH_BASE, (pos + 1).astype(np.uint64))
        some = counts > 0
        out[some] = np.add.reduceat(weighted, firsts[some])
    return out


def evenly_spaced(n: int, most: int) -> np.ndarray:
    """Up to `most` positions of range(n), spread evenly from first to last: the re-checked sample."""
    return np.unique(np.linspace(0, n - 1, min(most, n)).astype(np.int64))


Search = Callable[[np.ndarray, Seen | None], tuple[np.ndarray, np.ndarray]]  # -> (codes, scores)


def reuse_lists(
    path: Path,
    key: dict[str, Any],
    users: np.ndarray,
    vecs: np.ndarray,
    exclude: Seen | None,
    search: Search,
    recheck: int = 64,
    reuse: bool = True,
) -> tuple[np.ndarray, np.ndarray, str]:
    """`search(vecs, exclude)`, answered from the last call's answers where they still hold.

    An index's top-k for a row is a function of the index (`key`), the row's vector and its
    excluded items, so a row whose vector (bit for bit) and exclusions equal the ones stored at
    `path` under the same key gets the stored list; the other rows are searched. Up to `recheck`
    reused rows are searched again and compared; any difference searches every row. The answers
    are stored at `path` (written atomically, the key inside) for the next call; `reuse=False`
    searches every row and only stores. Evaluation asks annoy the same 10,000 users every night;
    most have not changed. Returns (codes, scores, what was reused)."""
    users = np.asarray(users, dtype=np.int64)
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    excl = rows_digest(exclude, len(users))
    key_text = json.dumps(key, sort_keys=True, default=str)
    hit, codes, scores = _stored_answers(path, key_text, users, vecs, excl) if reuse else (None, None, None)
    if hit is None or codes is None or scores is None or not hit.any():
        codes, scores = search(vecs, exclude)
        note = f"searched all {len(users)} rows"
    else:
        miss = np.flatnonzero(~hit)
        if len(miss):
            codes[miss], scores[miss] = search(vecs[miss], None if exclude is None else exclude.take(miss))
        reused = np.flatnonzero(hit)
        check = reused[evenly_spaced(len(reused), recheck)]
        again = search(vecs[check], None if exclude is None else exclude.take(check))
        if np.array_equal(again[0], codes[check]) and again[1].tobytes() == scores[check].tobytes():
            note = f"reused {len(reused)} of {len(users)} stored lists ({len(check)} searched again: equal)"
        else:
            codes, scores = search(vecs, exclude)
            note = f"stored lists differ when searched again: searched all {len(users)} rows"
    _store_answers(path, key_text, users, vecs, excl, codes, scores)
    return codes, scores, note


def _stored_answers(
    path: Path, key: str, users: np.ndarray, vecs: np.ndarray, excl: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(rows whose stored answer holds, codes, scores), codes/scores filled for those rows."""
    hit = np.zeros(len(users), dtype=bool)
    if not path.is_file():
        return hit, None, None
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if meta.get(b"key", b"").decode() != key or table.num_rows == 0:
        return hit, None, None
    stored = table.column("user").to_numpy()
    order = np.argsort(stored, kind="stable")
    at = np.minimum(np.searchsorted(stored, users, sorter=order), len(stored) - 1)
    row = order[at]
    k = table.schema.field("codes").type.list_size
    dim = table.schema.field("vector").type.list_size
    if dim != vecs.shape[1]:
        return hit, None, None
    s_vecs = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)[row]
    s_excl = table.column("excluded").to_numpy()[row]
    hit = (stored[row] == users) & (s_excl == excl) & (s_vecs == vecs).all(axis=1)
    codes = table.column("codes").combine_chunks().flatten().to_numpy().reshape(-1, k)[row]
    scores = table.column("scores").combine_chunks().flatten().to_numpy().reshape(-1, k)[row]
    return hit, codes.astype(np.int64), scores.astype(np.float32)


def _store_answers(
    path: Path,
    key: str,
    users: np.ndarray,
    vecs: np.ndarray,
    excl: np.ndarray,
    codes: np.ndarray,
    scores: np.ndarray,
) -> None:
    def fixed(a: np.ndarray, dtype: pa.DataType) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).ravel(), dtype), a.shape[1])

    table = pa.table(
        {
            "user": pa.array(users, pa.int64()),
            "vector": fixed(vecs, pa.float32()),
            "excluded": pa.array(excl, pa.uint64()),
            "codes": fixed(codes, pa.int64()),
            "scores": fixed(scores, pa.float32()),
        }
    ).replace_schema_metadata({"key": key})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    tmp.replace(path)
