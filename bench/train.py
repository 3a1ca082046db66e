"""Training benchmark: samples/s, data-loading share and time to best validation NDCG@10.

Data: a generated log (default 1M events) -> build-features -> our trainer, and in the same run
Torch-RecHub 0.9.0's `MatchTrainer` on the same samples (same users, targets, history windows,
4 uniform negatives per positive, list-wise softmax, batch size, embedding size, threads).
Torch-RecHub is optional (`pip install --no-deps torch-rechub==0.9.0 tqdm pandas`); without it
only our numbers are written.

Notes on the comparison:
- Torch-RecHub's GRU4Rec scores with `torch.mul(user, items).sum(dim=1)`, i.e. over the item axis
  instead of the embedding axis; we compare against a corrected copy (sum over dim=2).
- Torch-RecHub is timed on a fixed number of batches of its own DataLoader (num_workers=0, the
  per-sample `__getitem__` + default collate path), not full epochs, to keep runs short.
- Our model for the GRU4Rec comparison uses the same GRU size as Torch-RecHub's (2 layers,
  hidden = embed_dim). Its YoutubeDNN reads the same user columns as ours (all user attributes,
  the dense columns and the history), so both user MLPs do the same arithmetic.
- "compute only" times our YoutubeDNN step on batches prepared beforehand: the ceiling any data
  path could reach.

    python bench/train.py                          # 1M events, writes bench/out/train.json
    python bench/train.py --events 200000 --epochs 2 --models gru4rec
    python bench/train.py --events 3000000 --users 100000 --items 20000 --epochs 1 \
        --models youtubednn --full-softmax "" --compare-dense --out bench/out/train-3m.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.data.readers import FeatureStore, InMemorySamples, NegativeSampler
from rechub_store.models import build_model
from rechub_store.pipeline.train import train
from rechub_store.training.config import TrainConfig
from rechub_store.training.trainer import Trainer
from rechub_store.warehouse import Warehouse

OUT = Path(__file__).resolve().parent / "out"


def _prepare(args: argparse.Namespace) -> tuple[Warehouse, dict[str, Any]]:
    work = OUT / "work" / f"train-{args.events}"
    wh = Warehouse(work / "rechub.duckdb", threads=args.threads)
    info: dict[str, Any] = {}
    if args.regenerate or not wh.exists():
        if work.exists():
            for p in sorted(work.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        with wh.session() as con:
            t0 = time.perf_counter()
            generate_into(
                con,
                work / "files",
                n_users=args.users,
                n_items=args.items,
                n_events=args.events,
                seed=args.seed,
            )
            info["generate_ingest_seconds"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            report = build_features(con, BuildParams(max_seq_len=args.max_seq_len))
            info["build_seconds"] = round(time.perf_counter() - t0, 2)
            info["split"] = report.split
    return wh, info


def _config(model: str, args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    cfg = TrainConfig(
        model=model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        embed_dim=args.embed_dim,
        neg_mode="listwise",
        neg_ratio=args.neg_ratio,
        in_batch=False,
        patience=2,
        valid_users=args.valid_users,
        seed=args.seed,
        progress=args.progress,
    )
    return replace(cfg, **overrides)


def _ours(con: Any, model: str, args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    cfg = _config(model, args, **overrides)
    t0 = time.perf_counter()
    res = train(con, cfg, threads=args.threads)
    wall = time.perf_counter() - t0
    hist = res.history
    train_s = sum(h["train_seconds"] for h in hist)
    data_s = sum(h["data_seconds"] for h in hist)
    best = hist[res.best_epoch - 1]
    to_best = sum(h["train_seconds"] + h.get("valid_seconds", 0.0) for h in hist[: res.best_epoch])
    return {
        "framework": "rechub-store",
        "model": model,
        "neg_mode": cfg.neg_mode,
        "neg_ratio": cfg.neg_ratio,
        "model_params": cfg.model_params,
        "sparse_embeddings": res.params["sparse_embeddings"],
        "epochs_run": len(hist),
        "best_epoch": res.best_epoch,
        "samples_per_second": round(res.samples_per_second, 1),
        "data_loading_share": round(data_s / max(train_s, 1e-9), 4),
        "seconds_to_best": round(to_best, 2),
        "wall_seconds": round(wall, 2),
        "valid_ndcg@10": best["valid"]["ndcg@10"],
        "valid_hit@10": best["valid"]["hit@10"],
        "popularity_valid_ndcg@10": res.popularity_metric,
        "per_epoch_ndcg@10": [h["valid"]["ndcg@10"] for h in hist],
        "model_run_id": res.model_run_id,
    }


def _compute_only(
    store: FeatureStore, model: str, args: argparse.Namespace, steps: int = 200
) -> dict[str, Any]:
    """Our steps on batches prepared beforehand: the samples/s the model's arithmetic allows when
    the data side costs nothing (an upper bound for any data path, ours included)."""
    cfg = replace(_config(model, args).resolve(store.n_items), max_seq_len=store.max_seq_len)
    torch.manual_seed(args.seed)
    net = build_model(cfg.model, store.schema(cfg.max_seq_len), embed_dim=cfg.embed_dim)
    trainer = Trainer(net, store, cfg, InMemorySamples(store.samples["train"], cfg.seed, cfg.max_seq_len))
    batches = list(itertools.islice(trainer.prepared_batches(1), steps + 20))
    rows, t0 = 0, 0.0
    for i, prep in enumerate(batches):
        if i == 20:  # warm-up done
            rows, t0 = 0, time.perf_counter()
        rows += trainer.train_step(prep, epoch=1)[1]
    return {
        "framework": "rechub-store, compute only (batches prepared beforehand)",
        "model": model,
        "neg_mode": cfg.neg_mode,
        "neg_ratio": cfg.neg_ratio,
        "steps_timed": steps,
        "samples_per_second": round(rows / (time.perf_counter() - t0), 1),
    }


def _rechub_inputs(store: FeatureStore, args: argparse.Namespace) -> tuple[dict[str, np.ndarray], int]:
    """Torch-RecHub's input dict, materialized per sample as its data utilities do.

    The user side carries the same features our user tower reads (every user sparse column and
    the dense columns of `FeatureStore.user_batch`), so both frameworks do the same arithmetic.
    """
    s = store.samples["train"]
    rng = np.random.default_rng(args.seed)
    n = min(len(s), args.rechub_batches * args.batch_size)
    idx = np.sort(rng.choice(len(s), size=n, replace=False))
    users, targets, pos = s.user_code[idx], s.target[idx], s.pos[idx]
    negs = NegativeSampler(store).sample(users, args.neg_ratio, rng)
    user_side = store.user_batch(users, pos, store.max_seq_len, trim=False)
    x = {
        key.replace(".", "_"): value.numpy()
        for key, value in user_side.items()
        if key.startswith(("u.", "ud."))
    }
    x.update({"hist_item_id": user_side["hist"].numpy(), "item_id": targets, "neg_items": negs})
    return x, n


def _torch_rechub(store: FeatureStore, args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        from torch.utils.data import DataLoader
        from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
        from torch_rechub.models.matching import GRU4Rec, YoutubeDNN
        from torch_rechub.trainers import MatchTrainer
        from torch_rechub.utils.data import TorchDataset
    except ImportError as exc:
        return [{"framework": "torch-rechub 0.9.0", "skipped": f"not installed: {exc}"}]

    class GRU4RecFixed(GRU4Rec):
        """Torch-RecHub's GRU4Rec with the score summed over the embedding axis (dim=2)."""

        def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
            user = self.user_tower(x)
            items = self.item_tower(x)
            if self.mode == "user":
                return user
            if self.mode == "item":
                return items
            return torch.mul(user, items).sum(dim=2) / self.temperature

    x, n = _rechub_inputs(store, args)
    dim = args.embed_dim
    vocab = store.schema().vocab_sizes()
    user_f: list[Any] = [
        SparseFeature(key, vocab_size=vocab["user." + key[2:]], embed_dim=dim)
        for key in x
        if key.startswith("u_")
    ]
    user_f += [DenseFeature(key) for key in x if key.startswith("ud_")]

    def hist_f(pooling: str) -> list[Any]:  # GRU4Rec reads the raw sequence (concat), YoutubeDNN a mean
        return [
            SequenceFeature(
                "hist_item_id",
                vocab_size=store.n_items,
                embed_dim=dim,
                pooling=pooling,
                shared_with="item_id",
            )
        ]

    item_f = [SparseFeature("item_id", vocab_size=store.n_items, embed_dim=dim)]
    neg_f = [
        SequenceFeature(
            "neg_items", vocab_size=store.n_items, embed_dim=dim, pooling="concat", shared_with="item_id"
        )
    ]
    builders = {
        "youtubednn": lambda: YoutubeDNN(
            user_f + hist_f("mean"), item_f, neg_f, user_params={"dims": [256, 128, dim]}, temperature=0.05
        ),
        "gru4rec": lambda: GRU4RecFixed(
            [f for f in user_f if f.name == "u_user_id"],  # it concatenates user features to the GRU
            # state; ours reads none: user_id only
            hist_f("concat"),
            item_f,
            neg_f,
            user_params={"dims": [256, 128, dim]},  # GRU: 2 layers by default
            temperature=0.05,
        ),
    }
    y = np.zeros(n, dtype=np.int64)  # list-wise: the positive is class 0
    out = []
    for name in [m for m in args.models if m in builders]:
        torch.manual_seed(args.seed)
        model = builders[name]()
        trainer = MatchTrainer(
            model,
            mode=2,
            optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
            n_epoch=1,
            model_path=str(OUT / "rechub-tmp"),
        )
        loader = DataLoader(TorchDataset(x, y), batch_size=args.batch_size, shuffle=True, num_workers=0)
        t0 = time.perf_counter()
        for _ in loader:  # the data path alone: per-sample __getitem__ + default collate
            pass
        data_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with open(os.devnull, "w") as devnull:
            stderr, sys.stderr = sys.stderr, devnull  # tqdm
            try:
                trainer.train_one_epoch(loader)
            finally:
                sys.stderr = stderr
        total_s = time.perf_counter() - t0
        out.append(
            {
                "framework": "torch-rechub 0.9.0 MatchTrainer",
                "model": name + (" (score fixed)" if name == "gru4rec" else ""),
                "neg_mode": "listwise",
                "neg_ratio": args.neg_ratio,
                "samples_timed": n,
                "samples_per_second": round(n / total_s, 1),
                "data_loading_share": round(data_s / max(total_s, 1e-9), 4),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--max-seq-len", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--embed-dim", type=int, default=64)
    ap.add_argument("--neg-ratio", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--valid-users", type=int, default=5_000)
    ap.add_argument("--models", default="youtubednn,gru4rec,sasrec,dssm")
    ap.add_argument(
        "--full-softmax", default="gru4rec,sasrec", help="also train these with the default objective"
    )
    ap.add_argument("--rechub-batches", type=int, default=100)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--compare-dense",
        action="store_true",
        help="also train youtubednn with dense embedding gradients (plain Adam on every table)",
    )
    ap.add_argument("--out", type=Path, default=OUT / "train.json")
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    os.environ["RECHUB_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)

    wh, info = _prepare(args)
    results: dict[str, Any] = {
        "setup": {
            "events": args.events,
            "users": args.users,
            "items": args.items,
            "max_seq_len": args.max_seq_len,
            "batch_size": args.batch_size,
            "embed_dim": args.embed_dim,
            "neg_ratio": args.neg_ratio,
            "epochs_max": args.epochs,
            "valid_users": args.valid_users,
            "threads": args.threads,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            **info,
        },
        "runs": [],
    }
    with wh.session() as con:
        store = FeatureStore.load(con, splits=("train",))
        results["setup"]["train_samples"] = len(store.samples["train"])
        for model in args.models:
            params = {"hidden_size": args.embed_dim, "num_layers": 2} if model == "gru4rec" else {}
            results["runs"].append(_ours(con, model, args, model_params=params))
            print(json.dumps(results["runs"][-1]), flush=True)
            if args.compare_dense and model == "youtubednn":
                results["runs"].append(_ours(con, model, args, sparse_embeddings=False))
                print(json.dumps(results["runs"][-1]), flush=True)
        if "youtubednn" in args.models:  # its step is the cheapest: how much of it is arithmetic
            results["runs"].append(_compute_only(store, "youtubednn", args))
            print(json.dumps(results["runs"][-1]), flush=True)
        for model in [m for m in args.full_softmax.split(",") if m]:
            results["runs"].append(_ours(con, model, args, neg_mode=None, neg_ratio=None, in_batch=None))
            print(json.dumps(results["runs"][-1]), flush=True)
    for row in _torch_rechub(store, args):
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    ours = {
        r["model"]: r
        for r in results["runs"]
        if r.get("framework") == "rechub-store" and r["neg_mode"] == "listwise" and r["sparse_embeddings"]
    }
    results["speedup_vs_torch_rechub"] = {
        r["model"]: round(ours[r["model"].split(" ")[0]]["samples_per_second"] / r["samples_per_second"], 2)
        for r in results["runs"]
        if r.get("framework", "").startswith("torch-rechub")
        and "samples_per_second" in r
        and r["model"].split(" ")[0] in ours
    }
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
