"""The evaluation protocol end to end on a generated log with repeated items: `evaluate_run` gives, for
every seen filter, the metrics a plain-Python reference computes from the model's own vectors, and the
exact and annoy paths agree although the vectors are full of ties."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rechub_store.config import SEEN_FILTERS, AnnoySettings
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.data.readers import FeatureStore
from rechub_store.models import build_model
from rechub_store.ranking.embeddings import encode_items
from rechub_store.results.evaluate import evaluate_run
from rechub_store.results.score import score_run
from rechub_store.retrieval.scoring import ScoringContext
from rechub_store.training.registry import LoadedModel
from rechub_store.warehouse import Warehouse

KS = (1, 3, 5, 10)


class Quantized(nn.Module):
    """A model's own towers with outputs rounded to integers (every dot product is exact, so ties
    are real ties), and every third item given its predecessor's vector (more ties)."""

    score_kind = "dot"
    temperature = 1.0

    def __init__(self, base: nn.Module, n_items: int) -> None:
        super().__init__()
        self.base = base
        self.max_seq_len = base.max_seq_len
        codes = torch.arange(n_items)
        self.same_as = torch.where((codes % 3 == 0) & (codes > 1), codes - 1, codes)

    def user_tower(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.round(self.base.user_tower(batch) * 40)

    def item_tower(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = dict(batch)
        batch["i.item_id"] = self.same_as[batch["i.item_id"]]
        return torch.round(self.base.item_tower(batch) * 40)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Warehouse, Path]:
    root = tmp_path_factory.mktemp("protocol")
    wh = Warehouse(root / "rechub.duckdb", threads=2)
    with wh.session() as con:
        # 25 items for ~35 events per user: many users' held-out targets are items they had before
        generate_into(con, root / "data", n_users=120, n_items=25, n_events=4200, seed=3)
        build_features(con, BuildParams())
    return wh, root


def reference_metrics(ranks: list[float], k: int) -> dict[str, float]:
    hits = [r <= k for r in ranks]
    return {
        "hit": sum(hits) / len(ranks),
        "recall": sum(hits) / len(ranks),
        "precision": sum(hits) / len(ranks) / k,
        "ndcg": sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks),
        "mrr": sum(1 / r for r in ranks if r <= k) / len(ranks),
    }


def test_seen_filters_match_a_python_reference_and_annoy_agrees_on_ties(
    setup: tuple[Warehouse, Path],
) -> None:
    wh, root = setup
    with wh.session() as con:
        store = FeatureStore.load(con, splits=("test", "valid"))
        torch.manual_seed(0)
        base = build_model("youtubednn", store.schema(), embed_dim=8)
        model = Quantized(base, store.n_items).eval()
        items = encode_items(model, store, popularity=store.train_popularity)
        loaded = LoadedModel("quantized", model, "youtubednn", "dot", 1.0, model.max_seq_len, store.build_id,
                             base.schema, {}, root)  # fmt: skip
        ctx = ScoringContext(store, loaded, items, "dot", root / "models" / "quantized", eval_item_vecs=items)
        rows = {
            seen_filter: evaluate_run(
                con,
                ctx,
                f"run-{seen_filter}",
                ks=KS,
                splits=("test", "valid"),
                indexes=("exact", "annoy"),
                baselines=("popularity",),
                seen_filter=seen_filter,
                annoy_settings=AnnoySettings(search_k=100_000),  # annoy sees every item: same candidates
                list_users=0,
            ).rows
            for seen_filter in SEEN_FILTERS
        }

    # the reference: vectors from the towers in one call, ranks by the textbook rule in plain Python
    item_vecs = items.astype(np.float64).tolist()
    histories = [
        store.hist_items[store.hist_offsets[u] : store.hist_offsets[u + 1]].tolist()
        for u in range(store.n_users)
    ]
    n_repeats = {}
    for split in ("test", "valid"):
        s = store.samples[split]
        with torch.inference_mode():
            batch = store.user_batch(s.user_code, s.pos, model.max_seq_len, event_count=s.user_count)
            user_vecs = model.user_tower(batch).double().tolist()
        repeat = [int(t) in histories[u][:p] for u, p, t in zip(s.user_code, s.pos, s.target, strict=True)]
        n_repeats[split] = sum(repeat)
        for seen_filter in SEEN_FILTERS:
            model_ranks, pop_ranks = [], []
            for row, (u, p, t) in enumerate(
                zip(s.user_code.tolist(), s.pos.tolist(), s.target.tolist(), strict=True)
            ):
                earlier = set(histories[u][:p])
                removed = (
                    set() if seen_filter == "none" else earlier if seen_filter == "all" else earlier - {t}
                )
                for scores, out in (
                    (
                        [sum(a * b for a, b in zip(user_vecs[row], v, strict=True)) for v in item_vecs],
                        model_ranks,
                    ),
                    (store.item_train_count.tolist(), pop_ranks),
                ):
                    if t in removed:
                        out.append(math.inf)
                        continue
                    ahead = sum(
                        1
                        for i in range(1, store.n_items)
                        if i != t and i not in removed and scores[i] >= scores[t]
                    )
                    out.append(1 + ahead)
            got = [r for r in rows[seen_filter] if r["split"] == split and r["slice"] == "all"]
            for k in KS:
                for source, index, ranks in (
                    ("quantized", "exact", model_ranks),
                    ("quantized", "annoy", model_ranks),
                    ("popularity", "exact", pop_ranks),
                ):
                    want = reference_metrics(ranks, k)
                    for metric, value in want.items():
                        (row,) = [
                            r
                            for r in got
                            if (r["model_run_id"], r["index"], r["metric"], r["k"])
                            == (source, index, metric, k)
                        ]
                        assert math.isclose(row["value"], value, abs_tol=1e-12), (
                            split,
                            seen_filter,
                            source,
                            index,
                            metric,
                            k,
                        )
                        assert row["n_users"] == len(s) and row["n_repeat_targets"] == n_repeats[split]
                        assert row["seen_filter"] == seen_filter
            # with `all`, a repeated target is a guaranteed miss; `except-target` can hit it
            rep = {r["model_run_id"]: r["value"] for r in rows[seen_filter]
                   if r["split"] == split and r["slice"] == "repeat" and r["metric"] == "hit" and r["k"] == 10
                   and r["index"] == "exact"}  # fmt: skip
            if seen_filter == "all":
                assert rep == {"quantized": 0.0, "popularity": 0.0}
    assert n_repeats["test"] >= 10, "the log must hold repeated targets for this test to mean anything"
    ties = sum(len(v) - len(set(map(tuple, v))) for v in [item_vecs])
    assert ties > 5, "the vectors must hold ties"


def test_production_lists_exclude_seen_items_unless_repeats_are_allowed(
    setup: tuple[Warehouse, Path],
) -> None:
    wh, root = setup
    with wh.session() as con:
        store = FeatureStore.load(con, splits=())
        torch.manual_seed(0)
        base = build_model("sasrec", store.schema(), embed_dim=8)
        items = encode_items(base, store)
        loaded = LoadedModel("plain", base, "sasrec", "dot", 1.0, base.max_seq_len, store.build_id,
                             base.schema, {}, root)  # fmt: skip
        ctx = ScoringContext(store, loaded, items, "dot", root / "models" / "plain", eval_item_vecs=items)
        seen_in_lists = {}
        for exclude_seen in (True, False):
            score_run(con, ctx, f"r-{exclude_seen}", k=10, index="exact", exclude_seen=exclude_seen)
            (seen_in_lists[exclude_seen],) = con.execute(
                "SELECT count(*) FROM recommendations r JOIN staging.interactions s USING (user_id, item_id)"
            ).fetchone()
    assert seen_in_lists[True] == 0 and seen_in_lists[False] > 0


def test_accuracy_sample_keeps_its_users_as_users_arrive() -> None:
    """`evaluate.max_users`: adding users never swaps in an old user (an old user is in tonight's
    sample only if it was in last night's), and new users displace only about their share."""
    from rechub_store.data.readers import Samples
    from rechub_store.results.evaluate import accuracy_sample

    def split(n: int) -> Samples:
        users = np.arange(1, n + 1, dtype=np.int64)
        return Samples(users, users + 7, np.full(n, 3, dtype=np.int64))

    before = set(accuracy_sample(split(10_000), 1_000, seed=0).user_code.tolist())
    after = set(accuracy_sample(split(10_100), 1_000, seed=0).user_code.tolist())  # 1 % new users
    assert len(before) == len(after) == 1_000
    old_after = {u for u in after if u <= 10_000}
    assert old_after <= before and len(old_after) >= 970
    rows = accuracy_sample(split(500), 100, seed=3)
    assert len(rows) == 100 and (rows.target == rows.user_code + 7).all()  # rows stay whole
