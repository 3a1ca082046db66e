"""TwoTowerAdam: per-table gradient layout, lazy Adam equal to torch's SparseAdam, global clipping."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rechub_store.training.optim import TwoTowerAdam


class _Towers(nn.Module):
    """A big, lightly used table (users), a small, fully used one (items) and a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.users = nn.Embedding(1000, 4, padding_idx=0)
        self.items = nn.Embedding(6, 4, padding_idx=0)
        self.mix = nn.Linear(4, 4)

    def loss(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.mix(self.users(users)) * self.items(items)).sum().square()


def _batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randint(0, 1000, (16,), generator=gen), torch.randint(0, 6, (16,), generator=gen))
        for _ in range(steps)
    ]


def test_lightly_used_tables_go_sparse_and_match_torch_sparse_adam() -> None:
    torch.manual_seed(0)
    model = _Towers()
    reference = copy.deepcopy(model)
    reference.users.sparse = True
    opt = TwoTowerAdam(model, lr=0.01)
    ref_dense = torch.optim.Adam([*reference.items.parameters(), *reference.mix.parameters()], lr=0.01)
    ref_sparse = torch.optim.SparseAdam(list(reference.users.parameters()), lr=0.01)
    before = model.users.weight.detach().clone()
    touched: set[int] = set()
    for users, items in _batches(5):
        touched |= set(users.tolist())
        opt.zero_grad()
        model.loss(users, items).backward()
        opt.step()
        ref_dense.zero_grad()
        ref_sparse.zero_grad()
        reference.loss(users, items).backward()
        ref_dense.step()
        ref_sparse.step()
    assert model.users.sparse and not model.items.sparse
    assert opt.sparse_tables == ["1000x4"]
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    untouched = sorted(set(range(1000)) - touched)
    assert torch.equal(model.users.weight[untouched], before[untouched])  # lazy: rows not used, not moved
    assert torch.count_nonzero(model.users.weight[0]) == 0  # padding never trained


def test_dense_mode_keeps_every_table_dense_like_plain_adam() -> None:
    torch.manual_seed(0)
    model = _Towers()
    reference = copy.deepcopy(model)
    opt = TwoTowerAdam(model, lr=0.01, weight_decay=0.1, sparse=False)
    ref = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=0.1)
    for users, items in _batches(3):
        opt.zero_grad()
        model.loss(users, items).backward()
        opt.step()
        ref.zero_grad()
        reference.loss(users, items).backward()
        ref.step()
    assert not model.users.sparse and opt.sparse_tables == []
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want)


def test_clipping_covers_sparse_and_dense_gradients_together() -> None:
    torch.manual_seed(0)
    model = _Towers()
    users, items = _batches(1)[0]
    users = torch.cat([users, users[:4]])  # duplicate rows: the norm is that of the summed gradient
    items = torch.cat([items, items[:4]])
    opt = TwoTowerAdam(model, lr=0.01)
    model.loss(users, items).backward()
    expected = copy.deepcopy([p.grad.to_dense() if p.grad.is_sparse else p.grad for p in model.parameters()])
    dense_model = copy.deepcopy(model)
    for p, g in zip(dense_model.parameters(), expected, strict=True):
        p.grad = g.clone()
    want_norm = float(nn.utils.clip_grad_norm_(dense_model.parameters(), 0.5))
    got_norm = opt.clip_grad_norm(0.5)  # chooses layouts first: users' gradient becomes sparse
    assert model.users.weight.grad.is_sparse
    assert abs(got_norm - want_norm) <= 1e-4 * want_norm
    for p, q in zip(model.parameters(), dense_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad.to_dense() if p.grad.is_sparse else p.grad, q.grad)


def test_a_sparse_table_skipped_in_a_step_keeps_its_own_bias_correction() -> None:
    torch.manual_seed(0)
    tables = nn.ModuleList([nn.Embedding(1000, 4, padding_idx=0), nn.Embedding(1000, 4, padding_idx=0)])
    reference = copy.deepcopy(tables)
    for table in reference:
        table.sparse = True
    opt = TwoTowerAdam(tables, lr=0.01)
    ref = torch.optim.SparseAdam(list(reference.parameters()), lr=0.01)
    gen = torch.Generator().manual_seed(5)
    for step in range(5):
        codes = torch.randint(1, 1000, (8,), generator=gen)
        used = [0] if step == 1 else [0, 1]  # table 1 gets no gradient in the second step
        for model, optimizer in ((tables, opt), (reference, ref)):
            optimizer.zero_grad()
            sum(model[i](codes).square().sum() for i in used).backward()
            optimizer.step()
    for got, want in zip(tables.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_row_sparse_gradients_of_a_heavily_used_table_get_dense_adam() -> None:
    """History pooling always returns row-sparse gradients; a table most rows of which a step
    touches stays with dense Adam (the gradient densified), exactly like plain Adam."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"catalogue": nn.Embedding(6, 4, padding_idx=0)})
    reference = copy.deepcopy(model)
    opt = TwoTowerAdam(model, lr=0.01)
    ref = torch.optim.Adam(reference.parameters(), lr=0.01)
    codes, offsets = torch.tensor([1, 2, 3, 4, 5, 1, 2, 3]), torch.tensor([0, 3, 5])
    for _ in range(3):
        opt.zero_grad()
        F.embedding_bag(codes, model["catalogue"].weight, offsets, sparse=True).square().sum().backward()
        assert model["catalogue"].weight.grad.is_sparse
        opt.step()
        ref.zero_grad()
        F.embedding_bag(codes, reference["catalogue"].weight, offsets).square().sum().backward()
        ref.step()
    assert not model["catalogue"].sparse and opt.sparse_tables == []
    torch.testing.assert_close(model["catalogue"].weight, reference["catalogue"].weight)
