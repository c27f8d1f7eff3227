"""Second-stage classifiers of decoupled training (Kang et al., ICLR 2020; facebookresearch/classifier-balancing).

* ``tau_norm``: the stage-1 weights with each row divided by its norm to the power tau, bias dropped;
* ``lws``: the stage-1 linear head frozen, only a learnable per-class scale trained;
* ``ncm``: nearest class mean on centred, L2-normalized features (no training).

``tau_norm`` and ``lws`` keep the names ``weight`` / ``bias`` of ``nn.Linear``, so a stage-1 linear head's
``state_dict`` loads into them (``from_linear`` does the same from the module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltcls.models.classifiers import CLASSIFIERS


def _linear_init(in_features: int, num_classes: int, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights (and bias) drawn as ``nn.Linear`` draws them, for a head built before its weights are loaded."""
    linear = nn.Linear(in_features, num_classes, bias=bias)
    return linear.weight.detach(), (linear.bias.detach() if bias else None)


@CLASSIFIERS.register("tau_norm")
class TauNormClassifier(nn.Module):
    """``z = x (W / ||W_row||**tau)^T`` without bias (Kang et al., Sec. 4, tau-normalized classifier).

    tau = 0 is the plain (bias-free) linear head, tau = 1 gives unit-norm rows. ``tau`` is an
    attribute, so it can be swept on the validation split without rebuilding the head. A zero row
    stays zero instead of becoming NaN (its norm is clamped at the smallest positive float).
    """

    def __init__(self, in_features: int, num_classes: int, tau: float = 1.0) -> None:
        super().__init__()
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.tau = tau
        self.weight = nn.Parameter(_linear_init(in_features, num_classes, bias=False)[0].clone())

    @classmethod
    def from_linear(cls, linear: nn.Module, tau: float = 1.0) -> TauNormClassifier:
        """Tau-normalize a trained linear head (its bias, if any, is dropped as in the reference)."""
        num_classes, in_features = linear.weight.shape
        head = cls(in_features, num_classes, tau=tau).to(linear.weight)
        with torch.no_grad():
            head.weight.copy_(linear.weight)
        return head

    def normalized_weight(self) -> torch.Tensor:
        norms = self.weight.norm(dim=1, keepdim=True).clamp(min=torch.finfo(self.weight.dtype).tiny)
        return self.weight / norms.pow(self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, tau={self.tau}"


@CLASSIFIERS.register("lws")
class LWSClassifier(nn.Module):
    """Learnable weight scaling: ``z = (W x + b) * s`` with W, b frozen (Kang et al., Sec. 4, LWS).

    W and b are buffers, so ``scales`` (init 1) is the only parameter: an optimizer over
    ``parameters()`` cannot touch the stage-1 weights, whatever ``requires_grad`` a stage sets.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        weight, bias = _linear_init(in_features, num_classes)
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", bias.clone())
        self.scales = nn.Parameter(torch.ones(num_classes))

    @classmethod
    def from_linear(cls, linear: nn.Module) -> LWSClassifier:
        """Freeze a trained linear head (a missing bias becomes zeros) under scales initialized to 1."""
        num_classes, in_features = linear.weight.shape
        head = cls(in_features, num_classes).to(linear.weight)
        with torch.no_grad():
            head.weight.copy_(linear.weight)
            bias = getattr(linear, "bias", None)
            head.bias.copy_(bias) if bias is not None else head.bias.zero_()
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * self.scales

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}"


@CLASSIFIERS.register("ncm")
class NCMClassifier(nn.Module):
    """Nearest class mean: ``z_c = -||x_hat - mu_c||^2`` (Kang et al., Sec. 4; classifier-balancing ``cl2n``).

    ``x_hat = (x - m) / ||x - m||`` with m the mean of the training features, and ``mu_c`` the mean of
    ``x_hat`` over the training samples of class c (not re-normalized, as in the reference). Call
    :meth:`fit` on the training features first; the means are buffers, saved with the checkpoint. A
    class without training samples gets the logit ``-inf`` (it is never predicted).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("class_means", torch.zeros(num_classes, in_features))
        self.register_buffer("global_mean", torch.zeros(in_features))
        self.register_buffer("class_present", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _normalize(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features - self.global_mean.to(features.dtype), dim=1)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> NCMClassifier:
        """Set the global mean and the class means from training ``features`` (M, D) and ``labels`` (M,)."""
        num_classes, dim = self.class_means.shape
        if features.ndim != 2 or features.shape[1] != dim or labels.shape != features.shape[:1]:
            raise ValueError(f"expected features (M, {dim}) and labels (M,), got {tuple(features.shape)} "
                             f"and {tuple(labels.shape)}")
        features = features.to(self.class_means)
        labels = labels.to(features.device).long()
        counts = torch.bincount(labels, minlength=num_classes)
        if counts.numel() != num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got a maximum of {counts.numel() - 1}")
        self.global_mean.copy_(features.mean(dim=0))
        sums = torch.zeros_like(self.class_means).index_add_(0, labels, self._normalize(features))
        self.class_means.copy_(sums / counts.clamp(min=1)[:, None].to(sums.dtype))
        self.class_present.copy_(counts > 0)
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An eager-mode check: torch.export cannot branch on a buffer's value (the exporter checks the eager model)
        if not torch.compiler.is_exporting() and not bool(self.fitted):
            raise RuntimeError("NCMClassifier has no class means: call fit(train_features, train_labels) first")
        x = self._normalize(x)
        means = self.class_means.to(x.dtype)
        dist = (x * x).sum(1, keepdim=True) + (means * means).sum(1)[None, :] - 2.0 * x @ means.T
        return (-dist).masked_fill(~self.class_present[None, :], float("-inf"))

    def extra_repr(self) -> str:
        num_classes, dim = self.class_means.shape
        return f"in_features={dim}, num_classes={num_classes}, fitted={bool(self.fitted)}"
