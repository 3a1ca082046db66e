"""Adam for two-tower models, with row-sparse gradients for large, sparsely used embedding tables.

A batch touches a few hundred rows of a user-id table that may hold millions. With dense
gradients every step zero-fills the whole table's gradient and runs Adam over every row; a
row-sparse gradient carries only the touched rows, updated by lazy Adam
(moments and weights change only for the rows the batch used, as `torch.optim.SparseAdam`, in
a handful of row ops instead of its generic sparse-tensor arithmetic). For a
table most of whose rows every batch touches (the item table under a history lookup or a full
softmax), sparse gradients only add coalescing work, so the layout is chosen per table from the
first step's gradients: sparse where that step touched under `SPARSE_MAX_TOUCHED` of the rows.

The optimizer looks only at torch module types and gradient layouts, never at a model's
structure: any model built from `nn.Embedding` lookups (whose `sparse` flag the models honour)
works.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SPARSE_MAX_TOUCHED = 0.1  # fraction of a table's rows one step touched, below which it goes sparse


class TwoTowerAdam:
    """Fused Adam for dense gradients + lazy (sparse) Adam for row-sparse embedding gradients.

    `sparse=False`: every table dense (plain Adam everywhere; row-sparse gradients that lookups
    produce are densified). Weight decay applies to the dense group only (lazy Adam has none);
    the config enables sparse tables only without weight decay.
    """

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, sparse: bool = True) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lr = lr
        self.weight_decay = weight_decay
        self.tables = [m for m in model.modules() if isinstance(m, nn.Embedding)] if sparse else []
        self.sparse_tables: list[str] = []  # "rows x dim" of the tables switched to sparse (reporting)
        self._dense: torch.optim.Optimizer | None = None
        self._sparse_params: list[nn.Parameter] = []
        # id(param) -> [steps with a gradient, m, v]: bias correction counts per table, as SparseAdam
        self._lazy_state: dict[int, list] = {}
        self._built = False

    def set_lr(self, lr: float) -> None:
        """Change the learning rate of every parameter (a warm-up schedule calls this per step)."""
        self.lr = lr
        if self._dense is not None:
            for group in self._dense.param_groups:
                group["lr"] = lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _choose_layouts(self) -> None:
        """After the first backward: switch lightly used tables to sparse gradients, converting
        this step's gradient too, so that every step, the first included, is lazy. A lookup may
        already give a row-sparse gradient (history pooling does); a table left dense has it
        densified before each dense Adam step."""
        for table in self.tables:
            grad = table.weight.grad
            if grad is None or table.num_embeddings < 2:
                continue
            if grad.is_sparse:
                grad = grad.coalesce()
                touched = int(grad.indices().shape[1])
            else:
                touched = int((grad != 0).any(dim=1).sum())
            if touched < SPARSE_MAX_TOUCHED * table.num_embeddings:
                table.sparse = True
                table.weight.grad = grad if grad.is_sparse else grad.to_sparse(sparse_dim=1)
                self.sparse_tables.append(f"{table.num_embeddings}x{table.embedding_dim}")

    def _build(self) -> None:
        self._choose_layouts()
        lazy = {id(t.weight) for t in self.tables if t.sparse}
        self._sparse_params = [p for p in self.params if id(p) in lazy]
        dense = [p for p in self.params if id(p) not in lazy]
        if dense:
            self._dense = torch.optim.Adam(dense, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        self._built = True

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients (dense and sparse) so their global L2 norm is at most `max_norm`.

        `torch.nn.utils.clip_grad_norm_` rejects sparse gradients; sparse ones are coalesced here
        (duplicate rows summed) so the norm is that of the real gradient.
        """
        if not self._built:
            self._build()
        dense, norms = [], []
        for p in self.params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()
                norms.append(torch.linalg.vector_norm(p.grad._values()))
            else:
                dense.append(p.grad)
        if dense:
            norms.extend(torch._foreach_norm(dense))
        if not norms:
            return 0.0
        total = float(torch.linalg.vector_norm(torch.stack(norms)))
        if total > max_norm:
            coef = max_norm / (total + 1e-6)
            for p in self.params:
                if p.grad is None:
                    continue
                (p.grad._values() if p.grad.is_sparse else p.grad).mul_(coef)
        return total

    def state_dict(self) -> dict:
        """The dense Adam's state, for checkpoints (taken with every table dense: `sparse=False`)."""
        if self.tables:
            raise ValueError("checkpoints need sparse=False (lazy Adam state is kept per process)")
        if not self._built:
            self._build()
        return {"dense": self._dense.state_dict() if self._dense is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if not self._built:
            self._build()
        if self._dense is not None and state.get("dense") is not None:
            self._dense.load_state_dict(state["dense"])

    def step(self) -> None:
        if not self._built:
            self._build()
        if self._dense is not None:
            for p in self._dense.param_groups[0]["params"]:
                if p.grad is not None and p.grad.is_sparse:  # a lookup of the other layout
                    p.grad = p.grad.to_dense()
            self._dense.step()
        if self._sparse_params:
            for p in self._sparse_params:
                if p.grad is not None:
                    self._lazy_adam(p)

    @torch.no_grad()
    def _lazy_adam(
        self, p: nn.Parameter, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        """Adam on the rows present in p's row-sparse gradient (bias correction by p's own step count)."""
        grad = p.grad if p.grad.is_sparse else p.grad.to_sparse(sparse_dim=1)
        grad = grad.coalesce()
        rows, g = grad.indices()[0], grad.values()
        if id(p) not in self._lazy_state:
            self._lazy_state[id(p)] = [0, torch.zeros_like(p), torch.zeros_like(p)]
        state = self._lazy_state[id(p)]
        state[0] += 1
        t, m, v = state
        b1, b2 = betas
        m_rows = m.index_select(0, rows).lerp_(g, 1 - b1)
        v_rows = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
        m.index_copy_(0, rows, m_rows)
        v.index_copy_(0, rows, v_rows)
        step_size = self.lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        p.index_add_(0, rows, m_rows / v_rows.sqrt_().add_(eps), alpha=-step_size)
