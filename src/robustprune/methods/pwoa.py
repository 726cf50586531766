"""PwoA (Jian2022): prune a robust model without adversarial examples.

Self-distillation from the robust teacher (Jian2022 Eq. 10, :class:`~robustprune.objectives.Distillation`,
temperature 30, no CE) plus the HSIC bottleneck (Eq. 11, :class:`~robustprune.objectives.HBaR`),
optimised under the sparsity constraint with ADMM (App. A, :func:`~robustprune.methods.admm.admm_prune`),
then hard pruning and masked fine-tuning with the same objective. Optionally a fraction ``mix_ratio``
of every batch is replaced by PGD-10 examples (Sec. VI-C).

Balancing (App. B), done once at the end of the first ADMM epoch by :class:`PwoAHook`: measure
``L_D`` (the unweighted ``tau^2 KL``), ``L_ADMM`` and the two HSIC sums on a few training batches, then

* ``alpha`` such that ``L_ADMM / L_D = 10`` (``L_D = alpha tau^2 KL``);
* ``lambda_x : lambda_y`` fixed at 4 : 1 (MNIST-like) or 1 : 5 (CIFAR), both scaled so that
  ``L_D / L_H = 10``, where the size of ``L_H`` is taken as ``lambda_x sum HSIC(X, Z) + lambda_y sum HSIC(Y, Z)``
  (the signed ``lambda_x HSIC_x - lambda_y HSIC_y`` can cancel to ~0, which would make the scale blow up).

(The appendix's fractions are garbled in the PDF text; read as numerator/denominator they are
``L_ADMM / L_D = 10`` and ``L_D / L_H = 10``. Both ratios are parameters.)

Teachers: :func:`load_teacher` takes a robustprune checkpoint, a plain safetensors state dict for a
registered architecture, or an in-memory state dict. Pickle files (``.pt``/``.pth``) are refused with
a one-line error saying how to convert them: loading them would unpickle (``torch.load``), and even the
restricted ``weights_only=True`` unpickler is more attack surface than a project that promises "never
unpickle untrusted files" should carry; converting once, in a trusted shell, is one command.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robustprune.data import Split
from robustprune.errors import CheckpointError, ConfigError
from robustprune.methods.admm import (
    JIAN2022_RHO,
    JIAN2022_RHO_FACTOR,
    JIAN2022_RHO_MAX,
    JIAN2022_UPDATE_EVERY,
    ADMMHook,
    ADMMResult,
    admm_prune,
)
from robustprune.methods.admm_settings import ADMMMethod, ADMMSettings, admm_rate, admm_task_result
from robustprune.methods.interface import PAPERS, PhaseSettings, PruneResult, PruneTask, phase
from robustprune.methods.interface import register_method, setting
from robustprune.objectives import Distillation, HBaR
from robustprune.objectives.base import eval_mode
from robustprune.objectives.distill import prepare_teacher
from robustprune.train import Hook, TrainConfig

# ---------------------------------------------------------------------------------------- Jian2022 settings
#: Jian2022 Table IX (+ Sec. VI-A: SGD, momentum 0.9, weight decay 1e-4, batch 128, cosine schedule)
JIAN2022_TABLE_IX: dict[str, dict[str, float]] = {
    "mnist": dict(tau=30.0, alpha=10.0, lambda_x=4e-4, lambda_y=1e-4, admm_epochs=50, admm_lr=5e-4,
                  retrain_epochs=20, retrain_lr=1e-3),
    "cifar10": dict(tau=30.0, alpha=10.0, lambda_x=2e-5, lambda_y=1e-4, admm_epochs=50, admm_lr=1e-2,
                    retrain_epochs=100, retrain_lr=5e-3),
    "cifar100": dict(tau=30.0, alpha=1000.0, lambda_x=5e-7, lambda_y=2.5e-6, admm_epochs=50, admm_lr=1e-2,
                     retrain_epochs=100, retrain_lr=5e-3),
}
_TABLE_ALIASES = {"fashion-mnist": "mnist", "mnist": "mnist", "cifar10": "cifar10", "svhn": "cifar10",
                  "cifar100": "cifar100", "imagenette": "cifar10"}
#: lambda_x : lambda_y (App. B, after HBaR): 4 : 1 on MNIST, 1 : 5 on CIFAR-10/100
LAMBDA_RATIOS: dict[str, tuple[float, float]] = {"mnist": (4.0, 1.0), "cifar10": (1.0, 5.0), "cifar100": (1.0, 5.0)}


def table_ix(dataset: str) -> dict[str, float]:
    """Jian2022 Table IX settings for ``dataset`` (Fashion-MNIST uses MNIST's, SVHN/Imagenette CIFAR-10's)."""
    key = _TABLE_ALIASES.get(str(dataset).lower())
    if key is None:
        raise ConfigError(f"no Jian2022 settings for dataset {dataset!r}; use one of: {', '.join(sorted(_TABLE_ALIASES))}")
    return dict(JIAN2022_TABLE_IX[key], lambda_ratio=LAMBDA_RATIOS[key])


def pwoa_configs(dataset: str = "mnist", **overrides: Any) -> tuple[TrainConfig, TrainConfig]:
    """``(admm_cfg, retrain_cfg)`` of Jian2022 for ``dataset`` (Table IX + Sec. VI-A); ``overrides`` apply
    to both (e.g. ``epochs=2`` or ``max_steps_per_epoch=20`` for a quick run)."""
    t = table_ix(dataset)
    base = dict(batch_size=128, optimizer="sgd", momentum=0.9, weight_decay=1e-4, schedule="cosine")
    admm = TrainConfig(**{**base, "epochs": int(t["admm_epochs"]), "lr": t["admm_lr"], **overrides})
    retrain = TrainConfig(**{**base, "epochs": int(t["retrain_epochs"]), "lr": t["retrain_lr"], **overrides})
    return admm, retrain


# ---------------------------------------------------------------------------------------- teachers
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar"}


def _clean_state(state: Mapping[str, Any]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"teacher state dict entry {k!r} is not a tensor; pass a plain state_dict")
        k = str(k)
        if k.startswith("mask."):
            continue
        if k.startswith("module."):  # saved from DataParallel / DDP
            k = k[len("module."):]
        out[k] = v
    return out


def _load_state(model: nn.Module, state: Mapping[str, Any], where: str, arch: str) -> nn.Module:
    state = _clean_state(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    # a state dict made elsewhere may lack our normalisation buffers: keep the dataset's mean/std
    norm_only = all(k.startswith("normalize.") for k in missing)
    if unexpected or (missing and not norm_only):
        what = f"missing {', '.join(missing[:3])}" if missing and not norm_only else f"unexpected {', '.join(unexpected[:3])}"
        raise CheckpointError(f"teacher weights {where} do not match architecture {arch!r} ({what}); "
                              "pass the architecture (and width) the weights were trained with")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"teacher weights {where}: {k!r} has shape {tuple(v.shape)}, architecture "
                                  f"{arch!r} expects {tuple(own[k].shape)}; check the architecture and width")
    model.load_state_dict(state, strict=False)
    return model


def load_teacher(
    source: str | Path | Mapping[str, Tensor] | nn.Module,
    arch: str | None = None,
    dataset_spec: Any = None,
    *,
    width: float = 1.0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A frozen, eval-mode teacher from any robust model.

    ``source``: a robustprune checkpoint (``.safetensors`` with its ``.json`` sidecar; ``arch`` is then
    read from the sidecar), a plain safetensors file holding a state dict for the registered
    architecture ``arch`` (with ``dataset_spec``, a :class:`~robustprune.data.DatasetSpec` or its name,
    for classes, channels, size and normalisation; ``width`` its width factor), an in-memory state dict
    (same arguments) or an ``nn.Module``. Keys prefixed ``module.`` are accepted; missing normalisation
    buffers are filled from the dataset spec. Pickle files (``.pt``, ``.pth``, ...) are refused.
    """
    if isinstance(source, nn.Module):
        return prepare_teacher(source.to(device))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path.name} is a pickle file and is never unpickled here; convert it once to safetensors: "
                f"python -c \"import torch; from safetensors.torch import save_file; "
                f"save_file(torch.load('{path}', weights_only=True, map_location='cpu'), '{path.with_suffix('.safetensors')}')\""
            )
        if path.suffix.lower() == ".json":
            path = path.with_suffix(".safetensors")
        if not path.exists():
            raise CheckpointError(f"teacher {path} not found; pass a .safetensors checkpoint or state dict")
        if path.with_suffix(".json").exists():
            from robustprune.checkpoint import load_checkpoint

            model, meta, _masks = load_checkpoint(path, device=device)
            if arch is not None and str(arch).lower() != str(meta.get("architecture")).lower():
                raise CheckpointError(f"teacher {path} is a {meta.get('architecture')!r}, not {arch!r}; drop arch or fix it")
            return prepare_teacher(model)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Mapping[str, Tensor] = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"teacher {path} is not a readable safetensors file ({exc}); re-export it") from None
        where = str(path)
    elif isinstance(source, Mapping):
        state, where = source, "(state dict)"
    else:
        raise ConfigError(f"teacher must be a checkpoint path, a state dict or a model, got {type(source).__name__}")
    if arch is None or dataset_spec is None:
        raise ConfigError("a plain state dict needs arch= (a registered architecture) and dataset_spec= (e.g. 'mnist')")
    from robustprune.data import get_spec
    from robustprune.models import model_for_dataset

    spec = get_spec(dataset_spec) if isinstance(dataset_spec, str) else dataset_spec
    model = model_for_dataset(arch, spec, width=width)
    _load_state(model, state, where, arch)
    return prepare_teacher(model.to(device))


# ---------------------------------------------------------------------------------------- balancing
def balance_weights(
    *,
    distill: float,
    admm: float,
    hsic_x: float,
    hsic_y: float,
    lambda_ratio: tuple[float, float] = (4.0, 1.0),
    admm_to_distill: float = 10.0,
    distill_to_hbar: float = 10.0,
    alpha: float | None = None,
) -> dict[str, float | None]:
    """alpha, lambda_x, lambda_y from Jian2022 App. B's ratios.

    ``distill``: the unweighted distillation value ``tau^2 KL``; ``admm``: ``L_ADMM``; ``hsic_x``,
    ``hsic_y``: ``sum_l HSIC(X, Z_l)``, ``sum_l HSIC(Y, Z_l)``. Then
    ``alpha = admm / (admm_to_distill * distill)`` (so ``L_ADMM / L_D = admm_to_distill``) and
    ``(lambda_x, lambda_y) = s * lambda_ratio`` with ``s`` such that
    ``L_D / (lambda_x hsic_x + lambda_y hsic_y) = distill_to_hbar``. When a measured value is ~0 the
    corresponding weight cannot be set by its ratio: alpha then stays ``alpha`` (the input) and the
    lambdas are ``None`` (leave them unchanged).
    """
    tiny = 1e-12
    out: dict[str, float | None] = {"alpha": alpha, "lambda_x": None, "lambda_y": None}
    if distill > tiny and admm > tiny:
        out["alpha"] = admm / (admm_to_distill * distill)
    a = out["alpha"]
    rx, ry = (float(v) for v in lambda_ratio)
    denom = rx * hsic_x + ry * hsic_y
    if a is not None and distill > tiny and denom > tiny:
        s = a * distill / (distill_to_hbar * denom)
        out["lambda_x"], out["lambda_y"] = s * rx, s * ry
    return out


@contextmanager
def _no_mix(distill: Distillation):
    pgd = distill._pgd
    distill._pgd = None
    try:
        yield
    finally:
        distill._pgd = pgd


class PwoAHook(Hook):
    """Logs the PwoA terms per epoch and, with ``balance=True``, sets alpha / lambda_x / lambda_y once at
    the end of epoch ``balance_epoch`` (0-based; App. B: the first) from :func:`balance_weights`.

    The terms are measured in eval mode without gradients (and without the PGD mix) on ``probe``
    batches ``(x, y)`` of the training split. Epoch metrics gain ``pwoa_alpha``, ``pwoa_lambda_x``,
    ``pwoa_lambda_y`` and, with HBaR, ``hsic_x`` / ``hsic_y`` of the epoch's last batch.
    """

    def __init__(
        self,
        distill: Distillation,
        hbar: HBaR | None,
        admm: ADMMHook | None,
        probe: Sequence[tuple[Tensor, Tensor]] = (),
        *,
        balance: bool = True,
        balance_epoch: int = 0,
        lambda_ratio: tuple[float, float] = (4.0, 1.0),
        admm_to_distill: float = 10.0,
        distill_to_hbar: float = 10.0,
        balance_point: str = "projected",
    ) -> None:
        if balance_point not in ("projected", "student"):
            raise ConfigError(f"balance_point must be 'projected' or 'student', got {balance_point!r}")
        self.balance_point = balance_point
        self.distill, self.hbar, self.admm = distill, hbar, admm
        self.probe = list(probe)
        self.balance = bool(balance) and admm is not None and bool(self.probe)
        self.balance_epoch = int(balance_epoch)
        self.lambda_ratio = lambda_ratio
        self.admm_to_distill = float(admm_to_distill)
        self.distill_to_hbar = float(distill_to_hbar)
        self.result: dict[str, Any] = {}

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """Mean ``tau^2 KL``, ``sum HSIC(X, Z)``, ``sum HSIC(Y, Z)`` over the probe batches, and ``L_ADMM``.

        ``balance_point="projected"`` measures the distillation and HSIC terms with the constrained layers'
        weights replaced by their sparse projection ``Z`` (the loss the pruning constraint costs): after one
        epoch the student still nearly equals its teacher, so its own KL is ~0 and App. B's ratio would set alpha
        hundreds of times above the paper's values. ``"student"`` measures the student as it is (App. B read
        literally)."""
        if self.balance_point == "projected" and self.admm is not None:
            mods = self.admm._modules(model)
            saved = {n: m.weight.detach().clone() for n, m in mods.items()}
            try:
                for n, m in mods.items():
                    m.weight.copy_(self.admm.Z[n].to(m.weight.device, m.weight.dtype))
                terms = self._measure_terms(model)
            finally:
                for n, m in mods.items():
                    m.weight.copy_(saved[n])
        else:
            terms = self._measure_terms(model)
        terms["admm"] = float(self.admm.extra_loss(model)) if self.admm is not None else 0.0
        terms["point"] = self.balance_point
        return terms

    @torch.no_grad()
    def _measure_terms(self, model: nn.Module) -> dict[str, Any]:
        kd = hx = hy = 0.0
        with eval_mode(model), _no_mix(self.distill):
            for x, y in self.probe:
                if self.hbar is not None:
                    saved = self.hbar.inner
                    try:
                        self.hbar.inner = _KDOnly(self.distill)
                        out, vx, vy = self.hbar.terms(model, x, y)
                    finally:
                        self.hbar.inner = saved
                    kd += float(out.loss)
                    hx += float(vx)
                    hy += float(vy)
                else:
                    _s, k, _ce = self.distill.terms(model, x, y, mix=False)
                    kd += float(k)
        n = max(len(self.probe), 1)
        return {"distill": kd / n, "hsic_x": hx / n, "hsic_y": hy / n}

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        if self.balance and not self.result and epoch == self.balance_epoch:
            m = self.measure(model)
            w = balance_weights(distill=m["distill"], admm=m["admm"], hsic_x=m["hsic_x"], hsic_y=m["hsic_y"],
                                lambda_ratio=self.lambda_ratio, admm_to_distill=self.admm_to_distill,
                                distill_to_hbar=self.distill_to_hbar, alpha=self.distill.alpha)
            if w["alpha"] is not None:
                self.distill.alpha = float(w["alpha"])
            if self.hbar is not None and w["lambda_x"] is not None:
                self.hbar.lambda_x = float(w["lambda_x"])
                self.hbar.lambda_y = float(w["lambda_y"])
            self.result = {"measured": m, "alpha": self.distill.alpha,
                           "lambda_x": self.hbar.lambda_x if self.hbar else None,
                           "lambda_y": self.hbar.lambda_y if self.hbar else None,
                           "epoch": epoch + 1}
        metrics["pwoa_alpha"] = self.distill.alpha
        if self.hbar is not None:
            metrics["pwoa_lambda_x"] = self.hbar.lambda_x
            metrics["pwoa_lambda_y"] = self.hbar.lambda_y
            if self.hbar.last:
                metrics["hsic_x"] = float(self.hbar.last["hsic_x"])
                metrics["hsic_y"] = float(self.hbar.last["hsic_y"])


class _KDOnly:
    """Inner objective used while measuring: the unweighted ``tau^2 KL`` as the loss, no mix, no CE."""

    def __init__(self, distill: Distillation) -> None:
        self.distill = distill

    def __call__(self, model, x, y, *, generator=None):
        from robustprune.objectives import ObjectiveOutput

        s, kd, _ce = self.distill.terms(model, x, y, mix=False)
        return ObjectiveOutput(kd, s)


def _probe_batches(train: Split, batch_size: int, n_batches: int) -> list[tuple[Tensor, Tensor]]:
    out = []
    for i in range(n_batches):
        x, y = train.x[i * batch_size:(i + 1) * batch_size], train.y[i * batch_size:(i + 1) * batch_size]
        if len(y) < 2:
            break
        out.append((x, y))
    return out


# ---------------------------------------------------------------------------------------- the recipe
def pwoa(
    student: nn.Module | None,
    teacher: nn.Module | str | Path,
    *,
    train: Split,
    val: Split | None,
    scheme: str = "irregular",
    keep: float | Mapping[str, float] | None = None,
    rate: float | Mapping[str, float] | None = None,
    dataset: str = "mnist",
    admm_cfg: TrainConfig | None = None,
    retrain_cfg: TrainConfig | None = None,
    tau: float | None = None,
    alpha: float | None = None,
    lambda_x: float | None = None,
    lambda_y: float | None = None,
    lambda_ratio: tuple[float, float] | None = None,
    use_hbar: bool = True,
    balance: bool = False,
    balance_point: str = "projected",
    kd_reduction: str = "mean",
    balance_batches: int = 2,
    admm_to_distill: float = 10.0,
    distill_to_hbar: float = 10.0,
    mix_ratio: float = 0.0,
    eps: float | None = None,
    pgd_steps: int = 10,
    ce_weight: float = 0.0,
    hbar_layers: Sequence[str] | None = None,
    hsic_normalized: bool = True,
    sigma_scale: float = 5.0,
    rho: float | Mapping[str, float] = JIAN2022_RHO,
    rho_factor: float = JIAN2022_RHO_FACTOR,
    rho_max: float | None = JIAN2022_RHO_MAX,
    update_every: int = JIAN2022_UPDATE_EVERY,
    update_unit: str = "epoch",
    val_eps: float | None = None,
    augment: str | None = None,
    **admm_kwargs: Any,
) -> ADMMResult:
    """PwoA: prune ``student`` (in place; default: a copy of ``teacher``) by ADMM on
    ``alpha tau^2 KL(teacher || student) [+ lambda_x sum HSIC(X, Z) - lambda_y sum HSIC(Y, Z)] [+ ce_weight CE]``,
    then hard-prune to the exact per-layer target and fine-tune under the masks with the same objective.

    Defaults come from Jian2022 Table IX for ``dataset`` (:func:`table_ix`, :func:`pwoa_configs`): tau 30,
    alpha, lambdas, epochs and learning rates; ``rho`` 0.01 x1.35 per update up to 1, an update every 3
    epochs. ``balance=True`` re-sets alpha and the lambdas after the first ADMM epoch (module docstring).
    ``mix_ratio > 0`` replaces that fraction of each batch by PGD-``pgd_steps`` examples at ``eps``.
    Returns :class:`~robustprune.methods.admm.ADMMResult` (``times``: per-phase wall time; ``extras``:
    ``balance``, the final ``alpha`` / ``lambda_x`` / ``lambda_y``, the ``objective`` and the pruned ``student``).
    """
    t = table_ix(dataset)
    teacher = load_teacher(teacher, device=train.x.device)
    if student is None or student is teacher:
        student = copy.deepcopy(teacher)
        for p in student.parameters():
            p.requires_grad_(True)
    student.to(train.x.device)
    if admm_cfg is None or retrain_cfg is None:
        d_admm, d_retrain = pwoa_configs(dataset)
        admm_cfg = admm_cfg or d_admm
        retrain_cfg = retrain_cfg or d_retrain
    a = t["alpha"] if alpha is None else float(alpha)
    if kd_reduction == "mean":
        # Jian2022's code distils with nn.KLDivLoss(reduction="mean"), which divides the KL by batch x classes; its
        # alpha (Table IX) is in those units. Our KL is per sample (batchmean): the same effective weight is
        # alpha / classes.
        with torch.no_grad():
            classes = int(teacher(train.x[:1]).shape[1])
        a = a / classes
    elif kd_reduction != "batchmean":
        raise ConfigError(f"kd_reduction must be 'mean' (alpha as in Jian2022's code) or 'batchmean', got "
                          f"{kd_reduction!r}")
    distill = Distillation(teacher, tau=t["tau"] if tau is None else tau, alpha=a,
                           ce_weight=ce_weight, mix_ratio=mix_ratio, eps=eps, steps=pgd_steps)
    hbar = None
    objective: Any = distill
    if use_hbar:
        hbar = HBaR(distill, lambda_x=t["lambda_x"] if lambda_x is None else lambda_x,
                    lambda_y=t["lambda_y"] if lambda_y is None else lambda_y, layers=hbar_layers,
                    sigma_scale=sigma_scale, normalized=hsic_normalized)
        objective = hbar
    ratio = tuple(lambda_ratio) if lambda_ratio is not None else t["lambda_ratio"]
    if len(ratio) != 2 or min(ratio) < 0 or max(ratio) <= 0:
        raise ConfigError(f"lambda_ratio must be two numbers >= 0 (lambda_x : lambda_y), got {lambda_ratio!r}")
    if not isinstance(balance_batches, int) or balance_batches < 1:
        raise ConfigError(f"balance_batches must be an integer >= 1, got {balance_batches!r}")
    probe = _probe_batches(train, admm_cfg.batch_size, balance_batches) if balance else []
    hooks: list[PwoAHook] = []

    def make_hooks(admm_hook: ADMMHook) -> None:
        hooks.append(PwoAHook(distill, hbar, admm_hook, probe, balance=balance, lambda_ratio=ratio,  # type: ignore[arg-type]
                              admm_to_distill=admm_to_distill, distill_to_hbar=distill_to_hbar,
                              balance_point=balance_point))

    class _Deferred(Hook):  # forwards to the PwoAHook built once the ADMM hook exists
        def on_epoch_end(self, model, epoch, metrics):
            hooks[0].on_epoch_end(model, epoch, metrics)

    retrain_log = PwoAHook(distill, hbar, None, balance=False)
    result = admm_prune(
        student, objective=objective, train=train, val=val, admm_cfg=admm_cfg, retrain_cfg=retrain_cfg,
        scheme=scheme, keep=keep, rate=rate, rho=rho, rho_factor=rho_factor, rho_max=rho_max,
        update_every=update_every, update_unit=update_unit, val_eps=val_eps, augment=augment,
        hooks=[_Deferred()], retrain_hooks=[retrain_log], on_admm_hook=make_hooks, **admm_kwargs,
    )
    result.extras.update({
        "balance": hooks[0].result if hooks else {},
        "alpha": distill.alpha,
        "alpha_stated": a * (classes if kd_reduction == "mean" else 1) if not balance else None,
        "kd_reduction": kd_reduction,
        "tau": distill.tau,
        "lambda_x": hbar.lambda_x if hbar else None,
        "lambda_y": hbar.lambda_y if hbar else None,
        "mix_ratio": distill.mix_ratio,
        "objective": objective,
        "student": student,
    })
    return result


class PwoASettings(ADMMSettings):
    """PwoA (Jian2022). ``None`` values take Jian2022 Table IX for the task's dataset (Fashion-MNIST uses MNIST's)."""

    tau: float | None = setting(None, "Jian2022 Table IX (30)", "distillation temperature", gt=0)
    alpha: float | None = setting(None, "Jian2022 Table IX (10 MNIST/CIFAR-10, 1000 CIFAR-100)",
                                  "weight of the distillation term, in the units of kd_reduction", ge=0)
    kd_reduction: Literal["mean", "batchmean"] = setting(
        "mean", "Jian2022 reference code (nn.KLDivLoss, default reduction 'mean': KL / (batch x classes))",
        "units of alpha: 'mean' divides it by the number of classes for our per-sample KL")
    lambda_x: float | None = setting(None, "Jian2022 Table IX", "HBaR weight of HSIC(X, Z)", ge=0)
    lambda_y: float | None = setting(None, "Jian2022 Table IX", "HBaR weight of HSIC(Y, Z)", ge=0)
    use_hbar: bool = setting(True, "Jian2022 Eq. 11", "add the HSIC bottleneck to the distillation")
    balance: bool = setting(False, "Jian2022 Table IX (the reference code's fixed alpha and lambdas); App. B "
                            "balancing is optional", "re-set alpha and the lambdas after the first ADMM epoch")
    balance_point: Literal["projected", "student"] = setting(
        "projected", "robustprune (App. B measured on the student itself gives KL ~ 0 after one epoch)",
        "balance on the distillation loss of the sparse projection Z, or of the student as it is")
    balance_batches: int = setting(2, "robustprune", "training batches the balancing measures on", ge=1)
    mix_ratio: float = setting(0.0, "Jian2022 Sec. VI-C (0: no adversarial examples)",
                               "fraction of each batch replaced by PGD examples", ge=0, le=1)
    pgd_steps: int = setting(10, "Jian2022 Sec. VI-C", "PGD steps of the mixed-in examples", ge=1)
    ce_weight: float = setting(0.0, "Jian2022 Eq. 10 (self-distillation only)", "weight of a CE term", ge=0)
    sigma_scale: float = setting(5.0, "HBaR reference code (Wang et al. 2021)", "HSIC kernel width scale", gt=0)
    admm: PhaseSettings = phase("Jian2022 Sec. VI-A and Table IX (SGD, momentum 0.9, wd 1e-4, cosine, batch 128; "
                                "lr None: Table IX)", "the ADMM phase on the distillation objective",
                                optimizer="sgd", momentum=0.9, weight_decay=1e-4, schedule="cosine", select="last")
    retrain: PhaseSettings = phase("Jian2022 Sec. VI-A and Table IX", "masked fine-tuning on the same objective",
                                   optimizer="sgd", momentum=0.9, weight_decay=1e-4, schedule="cosine")


class PwoAMethod(ADMMMethod):
    paper = PAPERS["Jian2022"]
    Settings = PwoASettings
    needs_teacher = True
    prefix = "pwoa"
    summary = ("PwoA: ADMM {scheme} pruning by self-distillation from the robust model + HSIC bottleneck, no "
               "adversarial examples, then masked fine-tuning")

    def trains_on_eps(self, settings: PwoASettings) -> bool:
        return settings.mix_ratio > 0

    def passes_per_image(self, settings: PwoASettings, phase: str, *, objective_passes: float | None,
                         dataset: str | None) -> float:
        """The student's pass, the teacher's forward and the HSIC terms of every hidden layer (together 2.4 passes,
        measured on LeNet-5-Caffe: 65 s per rate where a fast-AT pass costs 220 us), and the PGD passes of the
        mixed-in fraction."""
        return 2.4 + settings.mix_ratio * settings.pgd_steps

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: PwoASettings) -> PruneResult:
        assert rate is not None
        dataset = task.dataset or "mnist"
        t = table_ix(dataset)
        admm_cfg = settings.admm.train_config(task, default_lr=t["admm_lr"])
        retrain_cfg = settings.retrain.train_config(task, default_lr=t["retrain_lr"], seed_offset=1)
        teacher = task.teacher
        if teacher is None:
            teacher = copy.deepcopy(model)
        res = pwoa(model, teacher, train=task.train, val=task.val, scheme=self.scheme,
                   rate=admm_rate(self, model, rate, settings), dataset=dataset,
                   admm_cfg=admm_cfg, retrain_cfg=retrain_cfg, tau=settings.tau, alpha=settings.alpha,
                   lambda_x=settings.lambda_x, lambda_y=settings.lambda_y, use_hbar=settings.use_hbar,
                   balance=settings.balance, balance_point=settings.balance_point,
                   kd_reduction=settings.kd_reduction, balance_batches=settings.balance_batches,
                   mix_ratio=settings.mix_ratio, eps=task.eps, pgd_steps=settings.pgd_steps,
                   ce_weight=settings.ce_weight, sigma_scale=settings.sigma_scale, val_eps=task.eps,
                   **settings.engine_kwargs(admm_cfg, len(task.train), task.augment))
        res.extras.pop("objective", None)
        res.extras.pop("student", None)
        return admm_task_result(self, model, task, rate, settings, res, admm_cfg, retrain_cfg)


for _scheme in ("irregular", "column", "filter"):
    register_method(PwoAMethod(_scheme))
