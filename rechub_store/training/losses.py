"""Training objectives over scores of one positive and N negatives per row, model-agnostic.

Negatives with code 0 (none could be drawn) are masked out of every loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity(user: Tensor, items: Tensor, kind: str, temperature: float) -> Tensor:
    """Score users [B, D] against items [B, N, D] (per row) or [M, D] (shared) -> [B, N] / [B, M]."""
    if kind == "cosine":
        user = F.normalize(user, dim=-1)
        items = F.normalize(items, dim=-1)
    scores = torch.einsum("bd,bnd->bn", user, items) if items.dim() == 3 else user @ items.T
    return scores / temperature if kind == "cosine" else scores


def pointwise_bce(pos: Tensor, neg: Tensor, neg_mask: Tensor) -> Tensor:
    """Binary cross-entropy on logits: positives labelled 1, negatives 0 (mean over all terms)."""
    pos_loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
    neg_loss = F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none")
    neg_loss = (neg_loss * neg_mask).sum()
    return (pos_loss + neg_loss) / (pos.numel() + neg_mask.sum()).clamp(min=1)


def pairwise_bpr(pos: Tensor, neg: Tensor, neg_mask: Tensor) -> Tensor:
    """Bayesian personalized ranking: -log sigmoid(s_pos - s_neg), averaged over valid pairs."""
    loss = -F.logsigmoid(pos.unsqueeze(1) - neg)
    return (loss * neg_mask).sum() / neg_mask.sum().clamp(min=1)


def listwise_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax cross-entropy with the positive in column 0; masked columns are dropped."""
    logits = logits.masked_fill(~mask, float("-inf"))
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def in_batch_logits(
    user: Tensor, pos_items: Tensor, targets: Tensor, kind: str, temperature: float, log_q: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Scores of every row against the other rows' positives [B, B] and the mask of usable columns.

    The diagonal (the row's own positive, already column 0) and accidental hits (another row with
    the same target item) are masked. `log_q` (log sampling probability per column) is subtracted
    to correct the popularity bias of in-batch sampling.
    """
    logits = similarity(user, pos_items, kind, temperature)
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    mask = targets.unsqueeze(0) != targets.unsqueeze(1)
    return logits, mask
