"""Seesaw loss for classification (Wang et al., CVPR 2021), matching mmpretrain's ``SeesawLoss``.

The reference adds ``log(M[y, j] * Cf[n, j])`` to the logits of every non-label column and takes softmax
cross-entropy, building the full C x C ratio matrix ``N[j] / N[i]`` every step to use N of its rows.
Here only those N x C rows are computed, and in probability space, from one softmax pass:

* mitigation ``M[y, j] = (N[j] / N[y])**p`` where that ratio is < 1, else 1, equals
  ``min(N[j], N[y])**p / N[y]**p`` (strict ``<``: at a tie both branches give 1);
* compensation ``Cf[n, j] = (s[n, j] / t_n)**q`` where that ratio is > 1, else 1, with
  ``t_n = max(s[n, y], eps)`` and ``s = softmax(z)`` detached, equals ``max(s[n, j], t_n)**q / t_n**q``.

So ``softmax(z')[n, j]`` is proportional to ``P[n, j] = s[n, j] * min(N'[j], N'[y]) * max(s[n, j], t_n)**q``
with ``N' = (N / max N)**p``: the per-row factors ``N[y]**p * t_n**q`` cancel in the normalization. The loss
is ``log(sum_j P[n, j]) - log P[n, y]`` with ``log P[n, y] = log s[n, y] + q log t_n + log N'[y]`` (a row whose
``s[n, y]`` underflows takes ``log s[n, y] = z[n, y] - logsumexp(z[n])`` instead) and the gradient is
``P / sum P - onehot``: the reference's loss and gradient, with two N x C buffers, one softmax and no
C x C matrix (``benchmarks/bench_losses.py`` compares them). Every factor of P is at most 1 and
``sum_j P[n, j] >= eps**q * min(N') / C``, far inside float32's range for realistic p, q, eps and counts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss


class _SeesawCrossEntropy(torch.autograd.Function):
    """Seesaw cross-entropy and its gradient from one softmax pass (see the module docstring).

    ``norm_counts`` is ``N' = (N / max N)**p`` (C,), or None for p = 0. ``reduction`` is applied inside so
    the backward pass scales the N x C gradient once.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, norm_counts: torch.Tensor | None, q: float,
                eps: float, reduction: str) -> torch.Tensor:
        y = labels[:, None]
        s = torch.softmax(logits, dim=1)
        s_y = s.gather(1, y)
        log_p_y = s_y.log()
        small = s_y < torch.finfo(s.dtype).tiny
        # Where s_y underflowed (a per-sample loss above ~87 in float32) take log s_y in log space. This check
        # syncs with the device once per call, as update_counts' bincount already does.
        if small.any():
            rows = small.squeeze(1).nonzero().squeeze(1)
            z_rows = logits[rows]
            log_p_y[rows] = z_rows.gather(1, y[rows]) - torch.logsumexp(z_rows, dim=1, keepdim=True)
        if q > 0:
            t = s_y.clamp(min=eps)
            prob = torch.maximum(s, t)
            if q != 1:
                prob.pow_(q)
            prob.mul_(s)
            log_p_y += q * t.log()
        else:
            prob, s = s, None
        if norm_counts is not None:
            norm_y = norm_counts[labels][:, None]
            prob.mul_(torch.minimum(norm_counts[None, :], norm_y, out=s))
            log_p_y += norm_y.log()
        del s
        sum_p = prob.sum(dim=1, keepdim=True)
        losses = (sum_p.log() - log_p_y).squeeze(1)
        ctx.save_for_backward(prob, sum_p, y)
        ctx.reduction = reduction
        if reduction == "mean":
            return losses.mean()
        return losses.sum() if reduction == "sum" else losses

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        prob, sum_p, y = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if ctx.reduction == "none":
            grad = grad[:, None]
        else:  # d(loss)/d(loss_n): the same for every row
            grad = (grad / len(y) if ctx.reduction == "mean" else grad).expand(len(y), 1)
        grad_logits = (prob * (grad / sum_p)).scatter_add_(1, y, -grad)
        return grad_logits, None, None, None, None, None


def seesaw_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, p: float = 0.8,
                         q: float = 2.0, eps: float = 1e-2, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the Seesaw logits ``z + log(M * Cf)`` of an (N, C) batch (mmpretrain's ``seesaw_ce_loss``).

    ``counts`` are the cumulative per-class sample counts (C,), already including this batch; they are
    clamped at 1 (as in the reference) so a class never seen gives no inf/NaN. ``reduction`` is
    ``"mean"`` (over samples), ``"sum"`` or ``"none"``. Only ``logits`` receives a gradient: the counts
    are data and the compensation uses detached scores, as in the reference. Computes N x C rows only
    (see the module docstring). Half-precision logits are computed in float32.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if counts.numel() != logits.shape[1]:
        raise ValueError(f"{counts.numel()} class counts for {logits.shape[1]} logit columns")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    labels = labels.long()
    if p <= 0 and q <= 0:
        return F.cross_entropy(logits, labels, reduction=reduction)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    norm_counts = None
    if p > 0:
        norm_counts = counts.to(device=logits.device, dtype=logits.dtype).clamp(min=1)  # a new tensor
        norm_counts = norm_counts.div_(norm_counts.max()).pow_(p)
    return _SeesawCrossEntropy.apply(logits, labels, norm_counts, q, eps, reduction)


def update_counts(counts: torch.Tensor, labels: torch.Tensor) -> None:
    """Add the batch's label histogram to ``counts`` in place, summed over all ranks when distributed.

    With torch.distributed initialized the histogram is all-reduced first, so every rank holds the
    same counts and the loss does not depend on the number of processes (mmdetection/mmpretrain keep
    per-rank counts instead).
    """
    hist = torch.bincount(labels.reshape(-1).long(), minlength=counts.numel())
    if hist.numel() != counts.numel():
        raise ValueError(f"labels must lie in [0, {counts.numel()}), got a maximum of {hist.numel() - 1}")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(hist)
    counts.add_(hist.to(counts))


def check_seesaw_params(p: float, q: float, eps: float) -> None:
    """Validate Seesaw hyper-parameters: p, q >= 0 (0 turns a factor off) and eps > 0."""
    if p < 0 or q < 0:
        raise ValueError(f"p and q must be >= 0, got p={p}, q={q}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")


@LOSSES.register("seesaw")
class SeesawLoss(LTLoss):
    """Seesaw loss (Wang et al., CVPR 2021, Eq. 4-8) as mmpretrain's ``SeesawLoss`` computes it.

    ``cum_samples`` (C,) counts the labels seen so far; it is a registered buffer (int64, exact at any
    count) so it is saved and restored with the checkpoint. Each forward first adds the batch's label
    histogram (all-reduced across ranks), then returns the mean over samples of cross-entropy on
    ``z + log(M * Cf)`` with mitigation exponent ``p`` and compensation exponent ``q`` (``eps`` bounds
    the divisor ``s_y``). p=0.8, q=2 as in the paper (q=1 in its ImageNet-LT runs).
    """

    def __init__(self, num_classes: int, p: float = 0.8, q: float = 2.0, eps: float = 1e-2) -> None:
        super().__init__()
        check_seesaw_params(p, q, eps)
        if num_classes is None or num_classes < 1:
            raise ValueError(f"seesaw needs num_classes >= 1 (from the data), got {num_classes}")
        self.num_classes = int(num_classes)
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("cum_samples", torch.zeros(self.num_classes, dtype=torch.long))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        update_counts(self.cum_samples, labels)
        return seesaw_cross_entropy(logits, labels, self.cum_samples, self.p, self.q, self.eps)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}"
