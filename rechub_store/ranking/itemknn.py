"""Item-kNN baseline: item-based k-nearest neighbours over the training interactions.

Each item keeps its `neighbours` most similar other items by cosine similarity of their (binary)
user columns, computed with scikit-learn in blocks of items so memory stays bounded. A user's
score for an item is the weighted similarity to the user's `recent` latest items before the cut
(the latest weighted 1, the one before `decay`, then decay^2, ...); items with no similarity fall
back to popularity order below every scored item (`baselines.fallback_scores`). `similar` holds
the item -> neighbours matrix, what an item-to-item table would publish (never an item itself).

An item's similarity to itself is `self_weight` (1, its cosine, by default), so a user's recent
items score themselves too. Under the evaluation protocol the seen filter removes the user's
earlier items except the target, so this only decides how well a repeated target ranks: without
it item-kNN could never predict a repeat, which on a repeat-heavy log is most targets. Production
lists exclude seen items unless told not to (then recent items come first, as re-consumption wants).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.models.space import Float, Int, Range
from rechub_store.ranking.baselines import SparseScorer, fallback_scores, training_events

SIMILARITY_BLOCK = 1 << 24  # item x item similarities computed this many at a time (64 MB float32)

# What `rechub-store tune --model itemknn` searches (the run's model_params; defaults in
# training.config.NEIGHBOUR_MODELS): few neighbours suit sparse, sequential logs, many suit dense
# ones; `recent` 1 with any decay is a last-item model, a long window with decay near 1 a profile.
SEARCH_SPACE: dict[str, Range] = {
    "neighbours": Int(10, 500, log=True),
    "recent": Int(1, 50, log=True),
    "decay": Float(0.3, 1.0),
    "self_weight": Float(0.0, 2.0),
}


class ItemKNN:
    """Item-based k-nearest neighbours over cosine similarity of the training interactions."""

    name = "itemknn"

    def __init__(
        self, neighbours: int = 100, recent: int = 20, decay: float = 0.8, self_weight: float = 1.0
    ) -> None:
        self.neighbours, self.recent, self.decay, self.self_weight = neighbours, recent, decay, self_weight

    def fit(self, store: FeatureStore) -> ItemKNN:
        users, items, _ = training_events(store)
        interactions = sp.csr_matrix(
            (np.ones(users.size, dtype=np.float32), (items, users)), shape=(store.n_items, store.n_users)
        )
        interactions.data[:] = 1.0  # a repeated (user, item) counts once (duplicates were summed)
        return self._use(self._top_neighbours(interactions), store)

    @classmethod
    def from_similar(
        cls,
        similar: sp.csr_matrix,
        store: FeatureStore,
        neighbours: int,
        recent: int,
        decay: float,
        self_weight: float,
    ) -> ItemKNN:
        """A fitted model from a saved neighbour matrix, over `store` (possibly a newer build: items
        the matrix does not know have no neighbours and fall back to popularity)."""
        n = store.n_items
        similar = sp.csr_matrix(similar, dtype=np.float32, copy=True)
        similar.resize((n, n))
        return cls(neighbours, recent, decay, self_weight)._use(similar, store)

    def _use(self, similar: sp.csr_matrix, store: FeatureStore) -> ItemKNN:
        self.similar, self.store, self.fallback = similar, store, fallback_scores(store)
        return self

    def _top_neighbours(self, interactions: sp.csr_matrix) -> sp.csr_matrix:
        """[n_items, n_items] CSR: each item's `neighbours` most similar other items (cosine > 0)."""
        # imported here: scikit-learn takes about 2 s to import, and most commands never fit item-kNN
        from sklearn.preprocessing import normalize
        from sklearn.utils.extmath import safe_sparse_dot

        n = interactions.shape[0]
        keep = min(self.neighbours, max(n - 1, 1))
        rows, cols, vals = [], [], []
        step = max(1, SIMILARITY_BLOCK // max(n, 1))
        # cosine = dot product of L2-normalised rows: normalise and transpose once, not per block
        unit = normalize(interactions, copy=True)
        unit_t = sp.csr_matrix(unit.T)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            sim = safe_sparse_dot(unit[lo:hi], unit_t, dense_output=True).astype(np.float32, copy=False)
            sim[np.arange(hi - lo), np.arange(lo, hi)] = 0.0  # not its own neighbour
            # torch's partial selection keeps the same similarities as np.argpartition, and the whole
            # fit takes 0.81x the time at 37k items (bench/itemknn.py); of two items tied at the
            # cut, either may be kept, with either selection
            best = torch.topk(torch.from_numpy(sim), keep, dim=1, sorted=False)
            score, top = best.values.numpy(), best.indices.numpy()
            ok = score > 0
            rows.append(np.repeat(np.arange(lo, hi), keep)[ok.ravel()])
            cols.append(top[ok])
            vals.append(score[ok])
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )

    def history_weights(self, user_codes: np.ndarray, hist_end: np.ndarray) -> sp.csr_matrix:
        """[U, n_items] CSR: the users' `recent` latest items before hist_end, weighted by recency."""
        store = self.store
        ends = np.minimum(np.asarray(hist_end, dtype=np.int64), store.history_length(user_codes))
        window = store.history_windows(user_codes, ends, self.recent)  # most recent last, 0 = padding
        weights = self.decay ** np.arange(self.recent - 1, -1, -1, dtype=np.float64)
        rows = np.repeat(np.arange(len(user_codes)), self.recent)
        real = window.ravel() > 0
        return sp.csr_matrix(
            (np.tile(weights, len(user_codes))[real].astype(np.float32), (rows[real], window.ravel()[real])),
            shape=(len(user_codes), store.n_items),
        )

    def scorer(self, user_codes: np.ndarray, hist_end: np.ndarray) -> SparseScorer:
        return self.rows_scorer(self.history_weights(user_codes, hist_end))

    def rows_scorer(self, rows: sp.csr_matrix) -> SparseScorer:
        """Scores of users given as `history_weights` rows: neighbours' similarities plus self."""
        return SparseScorer(rows, self.similar, self.fallback, diagonal=self.self_weight)
