"""One contract every two-tower model must pass: separable towers, padding invariance, learning."""

from __future__ import annotations

import duckdb
import numpy as np
import planted
import pytest
import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.models import MODELS, build_model
from rechub_store.models.features import fit_window
from rechub_store.pipeline.train import fit_model
from rechub_store.ranking.embeddings import encode_current_users, user_tower_reads, window_widths
from rechub_store.training.config import TrainConfig

ALL = sorted(MODELS)


def _model(name: str, store: FeatureStore, dim: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, store.schema(), embed_dim=dim)
    model.eval()
    return model


def _users(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    s = store.samples["train"]
    idx = np.arange(0, len(s), max(1, len(s) // 40))
    return s.user_code[idx], s.pos[idx]


@pytest.mark.parametrize("name", ALL)
def test_towers_run_alone_with_declared_score(name: str, store: FeatureStore) -> None:
    model = _model(name, store)
    users, ends = _users(store)
    with torch.no_grad():
        u = model.user_tower(store.user_batch(users, ends, model.max_seq_len))
        v = model.item_tower(store.item_batch(np.arange(store.n_items)))  # no user keys needed
    assert u.shape == (len(users), 8)
    assert v.shape == (store.n_items, 8)
    assert model.score_kind in ("dot", "cosine")
    assert model.temperature > 0
    assert torch.isfinite(u).all() and torch.isfinite(v).all()


@pytest.mark.parametrize("name", ALL)
def test_padding_never_changes_a_user_vector(name: str, store: FeatureStore) -> None:
    model = _model(name, store)
    users, ends = _users(store)
    batch = store.user_batch(users, ends, model.max_seq_len)
    with torch.no_grad():
        base = model.user_tower(batch)
        # 1. less padding: cut the window to the longest real history in the batch
        longest = int((batch["hist"] > 0).sum(1).max())
        short = dict(batch, hist=fit_window(batch["hist"], longest))
        torch.testing.assert_close(model.user_tower(short), base, rtol=1e-5, atol=1e-6)
        # 2. each row alone gives the same vector as inside a mixed batch
        for i in (0, len(users) // 2, len(users) - 1):
            alone = {k: v[i : i + 1] for k, v in batch.items()}
            torch.testing.assert_close(model.user_tower(alone), base[i : i + 1], rtol=1e-5, atol=1e-6)
        # 3. whatever the padding row's embedding holds, it is never read
        model.emb.table("hist").weight[0].normal_()
        torch.testing.assert_close(model.user_tower(batch), base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_codes_unknown_to_the_model_read_as_padding(name: str, store: FeatureStore) -> None:
    """A newer build may add users/items: codes past the model's vocabulary must not crash."""
    model = _model(name, store)
    items = store.item_batch(np.array([1, 2]))
    items["i.item_id"] = torch.tensor([1, store.n_items + 50])
    with torch.no_grad():
        v = model.item_tower(items)
        ref = model.item_tower({k: t[:1] for k, t in store.item_batch(np.array([0])).items()})
    assert torch.isfinite(v).all()
    if name != "dssm":  # id-only item towers: an unknown item is the padding vector
        torch.testing.assert_close(v[1:], ref)


@pytest.mark.parametrize("name", ALL)
def test_learns_planted_sequence_pattern(name: str, store: FeatureStore) -> None:
    cfg = TrainConfig(
        model=name, epochs=15, batch_size=128, embed_dim=16, lr=5e-3, patience=15, progress=False
    )
    _, result, _ = fit_model(store, cfg)
    best = result.history[result.best_epoch - 1]["valid"]
    assert best["hit@10"] >= 0.95, best
    assert best["ndcg@10"] > result.popularity["ndcg@10"] + 0.3


@pytest.mark.parametrize("name", [n for n in ALL if hasattr(MODELS[n], "sequence_outputs")])
def test_all_position_outputs_equal_the_user_tower_on_each_prefix(name: str, store: FeatureStore) -> None:
    """Training every position in one pass must see exactly what inference sees for that prefix."""
    model = _model(name, store)
    users, ends = _users(store)
    batch = store.user_batch(users, ends, model.max_seq_len, trim=False)
    hist = batch["hist"]
    with torch.no_grad():
        seq = model.sequence_outputs(batch)
        for j in range(hist.shape[1]):
            real = hist[:, j] > 0
            if not real.any():
                continue
            prefix = dict(batch, hist=fit_window(hist[:, : j + 1], hist.shape[1]))
            torch.testing.assert_close(seq[real, j], model.user_tower(prefix)[real], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def varied_store() -> FeatureStore:
    """Histories of 1 to 70 events (window 40): users fall in every window width of the encoding."""
    con = duckdb.connect()
    planted.write_feature_store(con, planted.cycle_histories(1200, 90, 1, 70, seed=3), 90, max_seq_len=40)
    return FeatureStore.load(con)


@pytest.mark.parametrize("name", ALL)
def test_a_current_user_vector_does_not_depend_on_the_users_encoded_with_it(
    name: str, varied_store: FeatureStore
) -> None:
    """Incremental scoring encodes only the users whose inputs changed and keeps the others'
    stored vectors, so each user must get bit for bit the vector it gets among all users."""
    store = varied_store
    torch.manual_seed(0)
    model = build_model(name, store.schema(), embed_dim=64).eval()
    users = np.flatnonzero(np.diff(store.hist_offsets) > 0)
    widths = window_widths(store.history_length(users), model.max_seq_len)
    assert set(widths.tolist()) == {1, 2, 4, 8, 16, 32, 40}
    everyone = encode_current_users(model, store, users, rows=64)
    rng = np.random.default_rng(1)
    for size in (1, 2, 7, 100, 700):
        pick = np.sort(rng.choice(len(users), size, replace=False))
        alone = encode_current_users(model, store, users[pick], rows=64)
        assert alone.tobytes() == everyone[pick].tobytes(), size
    # and they are the user tower's vectors (to float tolerance), not some other computation
    with torch.no_grad():
        batch = store.user_batch(users[:50], store.history_length(users[:50]), model.max_seq_len)
        torch.testing.assert_close(
            torch.from_numpy(everyone[:50]), model.user_tower(batch), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("name", ALL)
def test_inputs_the_user_tower_does_not_read_never_change_its_vector(name: str, store: FeatureStore) -> None:
    """Incremental scoring hashes only the inputs `user_tower_reads` reports: an input left out
    must not move the vector, however it changes."""
    model = _model(name, store)
    reads = user_tower_reads(model, store)
    assert "hist" in reads
    users, ends = _users(store)
    batch = store.user_batch(users, ends, model.max_seq_len)
    with torch.no_grad():
        base = model.user_tower(batch)
        for key in set(batch) - set(reads):
            noisy = dict(batch, **{key: batch[key] * 3 + 1})
            assert torch.equal(model.user_tower(noisy), base), key
