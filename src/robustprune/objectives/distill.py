"""Self-distillation from a (robust) teacher: Jian2022 Eq. 10 (PwoA's L_D), optionally with CE and a mix
ratio of PGD-10 examples (Jian2022 Sec. VI-C).

``L = alpha * tau^2 * KL(softmax(t / tau) || softmax(s / tau)) + ce_weight * CE(s, y)``

with ``t`` the teacher's and ``s`` the student's logits. The KL is averaged over the **batch**
(``reduction="batchmean"``: sum over classes, mean over samples), which is the KL divergence per
sample. PwoA's code used ``nn.KLDivLoss(log_target=True)`` with the default ``reduction="mean"``,
which also averages over the classes and so silently divides the distillation term by the number of
classes (10 on MNIST/CIFAR-10, 100 on CIFAR-100); its alpha values absorb that factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.objectives.base import ObjectiveOutput, eval_mode
from robustprune.objectives.standard import OBJECTIVES, PGDAT


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``KL(softmax(t / tau) || softmax(s / tau))`` with ``reduction="batchmean"`` (sum over classes, mean
    over the batch) -- *not* ``"mean"``, which would also divide by the number of classes.

    Computed in float64 (a batch x classes tensor: negligible cost) and returned in float32: at Jian2022's
    tau = 30 both distributions are nearly uniform, the KL is a difference of nearly equal terms (about 1e-5 of
    each), and float32 loses three to four of its seven digits to that cancellation -- the value then depends on
    the order of the sums, i.e. on the CPU's vector width or the GPU. The gradient is unaffected either way."""
    out = F.kl_div(
        F.log_softmax(student_logits.double() / tau, dim=1),
        F.log_softmax(teacher_logits.double() / tau, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return out if student_logits.dtype == torch.float64 else out.float()


def _num(value: Any, who: str, *, lo: float = 0.0, hi: float = math.inf, open_lo: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{who} must be a number, got {value!r}") from None
    bad = not math.isfinite(v) or v > hi or (v <= lo if open_lo else v < lo)
    if bad:
        span = f"({lo:g}, {hi:g}]" if open_lo else f"[{lo:g}, {hi:g}]"
        raise ConfigError(f"{who} must be in {span}, got {value!r}")
    return v


def prepare_teacher(teacher: Any) -> nn.Module:
    """A teacher module in eval mode with frozen parameters. A ``str``/``Path`` is loaded with
    :func:`robustprune.checkpoint.load_checkpoint` (safetensors + JSON sidecar; never unpickled)."""
    if isinstance(teacher, (str, Path)):
        from robustprune.checkpoint import load_checkpoint

        teacher, _meta, _masks = load_checkpoint(teacher)
    if not isinstance(teacher, nn.Module):
        raise ConfigError(
            f"distill teacher must be a model or a robustprune checkpoint path, got {type(teacher).__name__}"
        )
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@OBJECTIVES.register("distill")
@dataclass
class Distillation:
    """Distillation from ``teacher`` at temperature ``tau`` (default 30) with weight ``alpha`` (Jian2022 Eq. 10).

    ``alpha * tau^2 * KL(p_teacher || p_student)`` (batchmean; see the module docstring on PwoA's
    ``"mean"``) ``+ ce_weight * CE`` (0 by default: PwoA drops the label loss, Jian2022 Table V).
    ``mix_ratio`` in [0, 1]: that fraction of every batch (its first ``round(mix_ratio * n)`` samples;
    batches are shuffled) is replaced by PGD-``steps`` examples crafted on the *student* against the
    labels at L∞ radius ``eps`` (Jian2022's "mix ratio"); the teacher then sees the same mixed batch.
    (PwoA's code replaces a whole batch with probability mix_ratio instead; same fraction in
    expectation.) The teacher is run in eval mode under ``no_grad``; it is moved to the batch's device
    on first use. ``teacher`` may be a checkpoint path (registry use: ``build_objective("distill",
    teacher="runs/base.safetensors")``).
    """

    full_precision = True
    """Run in float32 even in a bf16 phase (``fit`` leaves autocast off for it): at tau = 30 the distillation signal
    lies in logit differences of about 1e-2 that bfloat16 logits (8 bits: 0.4 % of the logit) drown. Measured on the
    main job: PwoA at 16x lost 16 points of APGD accuracy (seed 0) when its KD term saw bf16 logits."""
    teacher: Any = field(repr=False)
    tau: float = 30.0
    alpha: float = 10.0  # Jian2022 Table IX (MNIST, CIFAR-10); CIFAR-100 uses 1000
    ce_weight: float = 0.0
    mix_ratio: float = 0.0
    eps: float | None = None
    steps: int = 10
    attack_alpha: float | None = None  # PGD step, default eps/4

    def __post_init__(self) -> None:
        self.teacher = prepare_teacher(self.teacher)
        self.tau = _num(self.tau, "distill tau", open_lo=True)
        self.alpha = _num(self.alpha, "distill alpha")
        self.ce_weight = _num(self.ce_weight, "distill ce_weight")
        self.mix_ratio = _num(self.mix_ratio, "distill mix_ratio", hi=1.0)
        self._pgd: PGDAT | None = None
        if self.mix_ratio > 0:
            if self.eps is None:
                raise ConfigError("distill with mix_ratio > 0 needs eps (the L∞ radius of the PGD examples)")
            self._pgd = PGDAT(eps=self.eps, alpha=self.attack_alpha, steps=self.steps)
            self.eps = self._pgd.eps

    # ------------------------------------------------------------------ pieces
    def _teacher_on(self, device: torch.device) -> nn.Module:
        p = next(self.teacher.parameters(), None)
        if p is None:
            p = next(self.teacher.buffers(), None)
        if p is not None and p.device != device:
            self.teacher.to(device)
        return self.teacher

    def mix(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``x`` with its first ``round(mix_ratio * n)`` samples replaced by PGD examples on ``model``."""
        if self._pgd is None:
            return x
        k = int(math.floor(self.mix_ratio * x.shape[0] + 0.5))
        if k <= 0:
            return x
        x_adv = self._pgd.craft(model, x[:k], y[:k], generator=generator)
        return torch.cat([x_adv, x[k:]], dim=0) if k < x.shape[0] else x_adv

    def teacher_logits(self, x: Tensor) -> Tensor:
        teacher = self._teacher_on(x.device)
        with torch.no_grad(), eval_mode(teacher):
            return teacher(x)

    def terms(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None, mix: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(student logits, tau^2 * KL (unweighted), CE)``; ``mix=False`` skips the PGD examples."""
        if mix:
            x = self.mix(model, x, y, generator=generator)
        t = self.teacher_logits(x)
        s = model(x)
        kd = self.tau * self.tau * kd_kl(s, t, self.tau)
        ce = F.cross_entropy(s, y) if self.ce_weight > 0 else s.new_zeros(())
        return s, kd, ce

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        s, kd, ce = self.terms(model, x, y, generator=generator)
        loss = self.alpha * kd
        if self.ce_weight > 0:
            loss = loss + self.ce_weight * ce
        return ObjectiveOutput(loss, s)
