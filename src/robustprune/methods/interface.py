"""One interface for every pruning method: :class:`PruningMethod`, registered once in :data:`METHODS`.

A method is

* a ``name`` (what the CLI, the study file and :func:`robustprune.prune` accept),
* its ``paper`` (author-year key and title),
* a typed ``Settings`` model (pydantic; every field's default carries its source: a paper table or a reference code
  file, see :func:`setting`),
* whether its compression rate is ``"set"`` by the user or ``"learned"`` by the method,
* the sparsity ``group`` it removes (unstructured / kernel / filter / column),
* one entry :meth:`PruningMethod.prune` ``(model, task, rate, settings) -> PruneResult``.

The :class:`PruneTask` says what the method may use: training and validation splits, the L∞ budget of adversarial
training, the number of epochs each phase gets unless the method's settings say otherwise (``epochs``), the
objective for methods that fine-tune with any objective, the dataset name for dataset-dependent defaults, a seed.

Vocabulary (docs/architecture.md, glossary): compression rate ``c`` means ``1/c`` of the prunable weights remain;
``group`` is the unit of removal; a learned rate is reported as learned with its achieved value.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from robustprune.data import Split
from robustprune.errors import ConfigError
from robustprune.objectives import Objective
from robustprune.registry import Registry
from robustprune.sparsity import MaskSet, prunable_layers
from robustprune.train import TrainConfig, TrainResult
from robustprune.train.config import format_validation_error
from robustprune.train.cost import training_passes

RateKind = Literal["set", "learned"]
GROUPS = ("unstructured", "kernel", "filter", "column")


@dataclass(frozen=True)
class Paper:
    """The paper a method comes from, by author-year key (e.g. ``Madaan2020``) and title."""

    key: str
    title: str

    def __str__(self) -> str:
        return f"{self.key} ({self.title})"


PAPERS: dict[str, Paper] = {
    p.key: p
    for p in (
        Paper("Madaan2020", "Adversarial Neural Pruning with Latent Vulnerability Suppression"),
        Paper("Ye2019", "Adversarial Robustness vs. Model Compression, or Both? (AdvPrune, concurrent adversarial "
                        "training and ADMM pruning)"),
        Paper("Jian2022", "Pruning Adversarially Robust Neural Networks without Adversarial Examples (PwoA)"),
        Paper("Merkle2022", "Pruning in the Face of Adversaries"),
        Paper("Sehwag2020", "HYDRA: Pruning Adversarially Robust Neural Networks"),
        Paper("Lee2019", "Adaptive Network Sparsification with Dependent Variational Beta-Bernoulli Dropout"),
        Paper("Dai2018", "Compressing Neural Networks using the Variational Information Bottleneck"),
        Paper("Zhao2023", "Holistic Adversarially Robust Pruning (HARP)"),
        Paper("Chen2022", "Sparsity Winning Twice: Better Robust Generalization from More Efficient Training "
                          "(FlyingBird, RobustBird)"),
        Paper("Li2023", "Learning Adversarially Robust Sparse Networks via Weight Reparameterization (Twin-Rep)"),
    )
}


def setting(default: Any, source: str, description: str = "", **constraints: Any) -> Any:
    """A settings field whose default states where it comes from, e.g.
    ``tau: float = setting(30.0, "Jian2022 Table IX", "distillation temperature", gt=0)``."""
    return Field(default, description=description, json_schema_extra={"source": source}, **constraints)


class PhaseSettings(BaseModel):
    """How one training phase of a method optimises. ``epochs`` None: the task's ``epochs`` (``--epochs``);
    ``lr`` None: the method's dataset-dependent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: float | None = Field(None, ge=0, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float | None = Field(None, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    select: Literal["val_robust", "val_clean", "last"] = "val_robust"

    def train_config(self, task: "PruneTask", *, default_lr: float = 1e-3, seed_offset: int = 0,
                     at_least_one_step: bool = False) -> TrainConfig:
        """The :class:`TrainConfig` of this phase under ``task``. Fractional epochs become whole epochs of
        ``max_steps_per_epoch`` steps (e.g. 0.5 epoch = one pass over half the batches). A budget that rounds to
        0 gradient steps is an error (the phase would not train), unless ``at_least_one_step`` (a part of a phase
        the method derives, e.g. a warm-up fraction, which then takes one step)."""
        epochs = task.epochs if self.epochs is None else self.epochs
        whole, steps = _epochs_and_steps(epochs, len(task.train), self.batch_size, at_least_one_step=at_least_one_step)
        return TrainConfig(epochs=whole, batch_size=self.batch_size, optimizer=self.optimizer,
                           lr=self.lr if self.lr is not None else default_lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, schedule=self.schedule, select=self.select,
                           seed=task.seed + seed_offset, progress=task.progress, max_steps_per_epoch=steps,
                           val_size=task.val_size, precision=task.precision, channels_last=task.channels_last,
                           compile=task.compile)


def _epochs_and_steps(epochs: float, n: int, batch_size: int, *,
                      at_least_one_step: bool = False) -> tuple[int, int | None]:
    """(whole epochs, steps per epoch or None for full epochs) of a budget of ``epochs`` over ``n`` images."""
    if epochs <= 0:
        return 0, None
    if float(epochs).is_integer():
        return int(epochs), None
    per_epoch = max(1, -(-n // batch_size))
    total = int(round(epochs * per_epoch))
    if total < 1:
        if not at_least_one_step:
            raise ConfigError(f"{epochs:g} epoch(s) of {n} images in batches of {batch_size} is "
                              f"{epochs * per_epoch:.2g} gradient steps, which rounds to 0: the phase would not "
                              f"train; give at least {1 / per_epoch:.2g} epochs (one step), or 0 to skip it")
        total = 1
    whole = max(1, math.ceil(epochs))
    return whole, max(1, -(-total // whole))


def phase(source: str, description: str = "", **defaults: Any) -> Any:
    """A :class:`PhaseSettings` field with method-specific defaults and their source."""
    return setting(PhaseSettings(**defaults), source, description)


class MethodSettings(BaseModel):
    """Base of every method's settings: frozen, unknown keys refused (a typo is an error, not a silent default).

    ``layers`` is the prunable scope every method shares: ``"all"`` (every Conv2d and Linear layer of the group),
    ``"conv"`` (convolutions only, as Jian2022's code on its MNIST LeNet), or a list of layer names; ADMM methods also
    take ``{layer: rate}`` (each listed layer to its own compression). Stored with every result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: Literal["all", "conv"] | list[str] | dict[str, float] = Field(
        "all", json_schema_extra={"source": "Merkle2022, Ye2019, Madaan2020, Sehwag2020 prune every layer (Jian2022's "
                                            "code: convolutions only)"},
        description="prunable scope: all, conv, [layer names] or {layer: rate} (ADMM methods)")

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per setting: name, default, source, description (nested phases flattened as ``phase.key``)."""
        rows = []
        for name, f in cls.model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            default = f.default
            if isinstance(default, BaseModel):
                for k, v in default.model_dump().items():
                    rows.append({"name": f"{name}.{k}", "default": v, "source": extra.get("source", ""),
                                 "description": (f.description or "") if k == "epochs" else ""})
                continue
            rows.append({"name": name, "default": default, "source": extra.get("source", ""),
                         "description": f.description or ""})
        return rows


@dataclass
class PruneTask:
    """What a pruning method may use besides the model."""

    train: Split
    val: Split | None = None
    eps: float | None = None
    """L∞ budget of adversarial training and of validation selection (None: a natural task)."""
    epochs: float = 1
    """Epochs of each training phase unless the method's settings give that phase its own."""
    objective: Objective | None = None
    """Fine-tuning objective for methods that take any (magnitude, random); None: PGD-AT at ``eps`` (or natural)."""
    dataset: str | None = None
    """Dataset name, for dataset-dependent defaults (e.g. Jian2022 Table IX)."""
    augment: str | None = None
    seed: int = 0
    progress: bool = False
    val_size: int = 1000
    """Validation points used for checkpoint selection each epoch."""
    masks: MaskSet | None = None
    """Masks the model already carries (an already-pruned input, or a resumed iterative chain)."""
    start_rate: float = 1.0
    """Compression the model already has (iterative chains resume from here)."""
    teacher: nn.Module | None = None
    """Distillation teacher for methods that need one (default: a frozen copy of the model as given)."""
    precision: str = "auto"
    """Numerical precision of every training phase: auto | fp32 | tf32 | bf16 (``robustprune.precision``)."""
    channels_last: bool | None = None
    """Memory layout of convolutional models while training (None: channels_last for bf16 on CUDA)."""
    compile: bool = False
    """``torch.compile`` the forward passes of every training phase."""
    log: Callable[[str], None] = field(default=lambda msg: None, repr=False)

    def __post_init__(self) -> None:
        e = self.epochs
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or not 0 <= e <= 10_000:
            raise ConfigError(f"epochs={e!r} is out of range: give a number of epochs in [0, 10000] (0: the phases "
                              "without their own epochs do not train)")

    def fine_tune_objective(self) -> Objective:
        from robustprune.objectives import build_objective

        if self.objective is not None:
            return self.objective
        if self.eps is None:
            return build_objective("natural")
        return build_objective("pgd-at", eps=self.eps, steps=10)

    def need_eps(self, method: str) -> float:
        if self.eps is None:
            raise ConfigError(f"{method} trains on adversarial examples; give eps (e.g. --eps 0.1 or eps=0.1)")
        return float(self.eps)


@dataclass(frozen=True)
class PhaseWork:
    """What one training phase of a method will cost, counted before it runs (the study's remaining-time estimate):
    ``passes`` forward + backward passes over one image in all (training steps x batch x passes per image, plus
    the per-epoch validation attack), over every run of the phase the rates need."""

    phase: str
    passes: float


@dataclass
class PruneResult:
    """What every method returns: the pruned model (pruned weights exactly zero), its masks, the target rate (None
    when learned) and the achieved compression, per-phase history and wall time, and convergence signals."""

    model: nn.Module
    masks: MaskSet
    method: str
    rate: float | None
    rate_kind: RateKind
    group: str
    achieved_compression: float
    settings: dict[str, Any]
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    wall_time: float = 0.0
    convergence: dict[str, Any] = field(default_factory=dict)
    converged: bool | None = None
    """True / False when the method has a convergence signal (e.g. the ADMM residual), None when not measured."""
    steps: int = 0
    """Gradient steps taken (all phases)."""
    epochs: float = 0.0
    """Epochs trained (all phases)."""
    extras: dict[str, Any] = field(default_factory=dict)
    mechanism: dict[str, Any] = field(default_factory=dict)
    """What must have happened for this result to be the method's (:func:`mechanism`): ``{"requirement": str,
    "acted": bool, "evidence": {...}}``; empty for a method that states no requirement (a one-shot cut always acts).
    Also kept in ``convergence["mechanism"]`` (the study's database and the sidecar)."""

    def summary(self) -> dict[str, Any]:
        """JSON-able description (no tensors), as stored in checkpoints' sidecars and the database."""
        return {"method": self.method, "rate": self.rate, "rate_kind": self.rate_kind, "group": self.group,
                "achieved_compression": self.achieved_compression, "settings": self.settings,
                "times": self.times, "wall_time": self.wall_time, "convergence": self.convergence,
                "converged": self.converged, "steps": self.steps, "epochs": self.epochs, "history": self.history,
                "mechanism": self.mechanism}

    @property
    def rate_label(self) -> str:
        return f"learned (x{self.achieved_compression:.3g})" if self.rate is None else f"{self.rate:g}"


def mechanism(requirement: str, acted: bool, **evidence: Any) -> dict[str, Any]:
    """A method's statement of what must have happened for its result to be that method's (``requirement``, one
    sentence), whether it did (``acted``) and the counts that show it (``evidence``, JSON-able)."""
    return {"requirement": requirement, "acted": bool(acted), "evidence": evidence}


def result_flags(result: PruneResult, *, val_clean: float | None = None, num_classes: int | None = None,
                 start_compression: float = 1.0, base_val_clean: float | None = None) -> list[str]:
    """What makes a pruned model suspect, as stored flags: ``chance-accuracy`` (validation clean accuracy within
    5 points of 1 / classes), ``accuracy-lost`` (it kept less than half of the base model's validation accuracy above
    chance), ``nothing-pruned`` (achieved compression not above the starting one), ``not-converged`` (the method's
    own convergence signal says so), ``mechanism-did-not-act`` (what the method states must happen for its result to
    be that method's, :attr:`PruneResult.mechanism`, did not happen)."""
    flags = []
    chance = 1.0 / num_classes if num_classes else 0.0
    if val_clean is not None and num_classes and val_clean <= chance + 0.05:
        flags.append("chance-accuracy")
    elif (val_clean is not None and base_val_clean is not None and base_val_clean > chance
          and val_clean - chance < 0.5 * (base_val_clean - chance)):
        flags.append("accuracy-lost")
    if not result.achieved_compression > start_compression * (1 + 1e-6):
        flags.append("nothing-pruned")
    if result.converged is False:
        flags.append("not-converged")
    if (result.mechanism or {}).get("acted") is False:
        flags.append("mechanism-did-not-act")
    return flags


FLAG_TEXT = {
    "chance-accuracy": "validation accuracy at chance level: the model collapsed",
    "accuracy-lost": "it kept less than half of the base model's validation accuracy above chance: check the "
                     "settings and the budget before reading this as the method's behaviour",
    "nothing-pruned": "nothing was pruned (achieved compression not above the starting one)",
    "not-converged": "the method's convergence signal says it did not finish its job at this budget",
    "mechanism-did-not-act": "what makes the result this method's did not happen at this budget (the sidecar's "
                             "prune_result.mechanism says what and shows the counts): do not read it as the method",
}


def achieved_compression(model: nn.Module) -> float:
    """Prunable weights (every Conv2d / Linear weight) / non-zero ones (inf when every weight is zero)."""
    total = nonzero = 0
    for mod in prunable_layers(model, "unstructured").values():
        w = mod.weight.detach()
        total += w.numel()
        nonzero += int(torch.count_nonzero(w))
    return float(total / nonzero) if nonzero else math.inf


def history_of(result: TrainResult | None) -> list[dict[str, Any]]:
    return list(result.history) if result is not None else []


def steps_of(result: TrainResult | None) -> int:
    return int(getattr(result, "steps", 0) or 0) if result is not None else 0


class PruningMethod:
    """Base class. Subclasses set the class attributes and implement :meth:`run`; :meth:`prune` validates the rate
    and settings, times the call and fills the common fields of :class:`PruneResult`."""

    name: str = ""
    paper: Paper
    Settings: type[MethodSettings] = MethodSettings
    rate_kind: RateKind = "set"
    group: str = "unstructured"
    description: str = ""
    needs_eps: bool = False
    """True when the method trains on adversarial examples (``task.eps`` required)."""
    needs_teacher: ClassVar[bool] = False
    """True when the method distils from a teacher (``task.teacher``; a study passes the unpruned base model)."""
    uses_objective: ClassVar[bool] = False
    """True when the method fine-tunes with ``task.objective`` (any objective)."""

    # ---- settings -------------------------------------------------------------------------------------------
    def settings(self, values: Mapping[str, Any] | MethodSettings | None = None, **overrides: Any) -> MethodSettings:
        """Validated settings from a mapping (dotted keys such as ``admm.lr`` address a phase's field) and overrides;
        a wrong key or value is a one-line :class:`ConfigError`."""
        if isinstance(values, MethodSettings) and not overrides:
            if not isinstance(values, self.Settings):
                raise ConfigError(f"{self.name} takes {self.Settings.__name__}, got {type(values).__name__}")
            return values
        data: dict[str, Any] = values.model_dump() if isinstance(values, MethodSettings) else dict(values or {})
        data.update(overrides)
        nested: dict[str, Any] = {}
        for key, value in data.items():
            key = str(key).replace("-", "_")
            if "." in key:
                head, _, tail = key.partition(".")
                sub = nested.setdefault(head, {})
                if not isinstance(sub, dict):
                    sub = dict(sub.model_dump()) if isinstance(sub, BaseModel) else {}
                    nested[head] = sub
                sub[tail] = value
            elif isinstance(value, Mapping) and isinstance(nested.get(key), dict):
                nested[key].update(value)
            else:
                nested[key] = dict(value) if isinstance(value, Mapping) else value
        # A phase given in part (``prune: {epochs: 5}``, ``--set admm.lr=0.01``) changes only what it names: the
        # rest keeps the method's own phase defaults (e.g. HYDRA's SGD lr 0.1), not PhaseSettings' generic ones.
        for key, value in nested.items():
            field = self.Settings.model_fields.get(key)
            if field is not None and isinstance(field.default, PhaseSettings) and isinstance(value, dict):
                nested[key] = {**field.default.model_dump(), **value}
        try:
            return self.Settings(**nested)
        except ValidationError as exc:
            raise ConfigError(f"invalid settings for {self.name}: {format_validation_error(exc)} "
                              f"(see `robustprune list methods --settings {self.name}`)") from None
        except TypeError as exc:
            raise ConfigError(f"invalid settings for {self.name}: {exc}") from None

    def check_rate(self, rate: float | None, start_rate: float = 1.0) -> float | None:
        if self.rate_kind == "learned":
            if rate is not None:
                raise ConfigError(f"{self.name} learns its compression rate; drop the rate (it reports the achieved "
                                  "one)")
            return None
        if rate is None:
            raise ConfigError(f"{self.name} needs a compression rate c > 1 (1/c of the prunable weights remain), "
                              "e.g. --rate 4")
        try:
            r = float(rate)
        except (TypeError, ValueError):
            raise ConfigError(f"compression rate must be a number > 1, got {rate!r}") from None
        if not (math.isfinite(r) and r > 1):
            raise ConfigError(f"compression rate must be a finite number > 1 (1/c of the prunable weights remain), "
                              f"got {rate!r}")
        if r <= start_rate + 1e-9:
            raise ConfigError(f"the model is already at compression {start_rate:.3g}; a target of {r:g} would prune "
                              f"nothing: give a rate above {start_rate:.3g}")
        return r

    def check_max_rate(self, model: nn.Module, rate: float | None) -> None:
        """Refuse a rate that leaves less than one group per prunable layer on average (e.g. ``--rate 1e9``)."""
        if rate is None:
            return
        from robustprune.sparsity import num_groups

        group = self.group if self.group in GROUPS else "unstructured"
        layers = prunable_layers(model, group)
        if not layers:
            raise ConfigError(f"{self.name}: the model has no layers prunable with group {group!r}")
        total = sum(num_groups(mod.weight.shape, group) for mod in layers.values())
        most = total / len(layers)
        if rate > most:
            raise ConfigError(f"compression rate {rate:g} would leave less than one {group} group per prunable "
                              f"layer ({total} groups in {len(layers)} layers); the largest rate {self.name} can "
                              f"reach on this model is {most:.4g}")

    def scope_layers(self, model: nn.Module, settings: MethodSettings, group: str | None = None) -> list[str] | None:
        """The names of the layers ``settings.layers`` selects among the model's prunable layers of ``group`` (None:
        all of them); a per-layer rate dict is for ADMM methods only."""
        g = group or (self.group if self.group in GROUPS else "unstructured")
        scope = settings.layers
        if scope == "all":
            return None
        prunable = prunable_layers(model, g)
        if scope == "conv":
            names = [n for n, m in prunable.items() if isinstance(m, nn.Conv2d)]
        elif isinstance(scope, dict):
            if not getattr(self, "per_layer_rates", False):
                raise ConfigError(f"{self.name} takes layers as 'all', 'conv' or a list of layer names; a {{layer: "
                                  "rate}} dict is for the ADMM methods (admm-*, pwoa-*)")
            names = list(scope)
        else:
            names = list(scope)
        unknown = [n for n in names if n not in prunable]
        if unknown:
            raise ConfigError(f"layers {unknown[:5]} are not prunable by {self.name}; prunable: "
                              f"{', '.join(list(prunable)[:8])}")
        if not names:
            raise ConfigError(f"layers={scope!r} selects no prunable layer of this model for {self.name}")
        return names

    def incremental(self, settings: MethodSettings) -> bool:
        """True when a higher rate continues from the model of the lower one (the iterative schedule); the study then
        resumes a chain from the highest stored rate below."""
        return False

    def rate_path(self, rates: Sequence[float], settings: MethodSettings) -> list[float]:
        """The rates visited to reach ``rates[-1]`` (what a cell's model depends on); default: the target only."""
        return [rates[-1]]

    # ---- what the generic options mean to it ------------------------------------------------------------------
    def trains_on_eps(self, settings: MethodSettings) -> bool:
        """True when the L∞ budget of the task shapes the training itself (adversarial examples), not only the
        validation attack that selects checkpoints."""
        return self.needs_eps or self.uses_objective

    def unused_options(self, settings: MethodSettings, *, epochs: float | None = None,
                       eps: float | None = None) -> list[str]:
        """Why a generic option given (``epochs``: the task's epochs; ``eps``: a budget) changes nothing or less
        than it says for this method with ``settings``: one sentence each, naming what the method uses instead."""
        out = []
        phases = self.phases(settings)
        if epochs is not None and phases and all(ph.epochs is not None for _, ph in phases):
            own = ", ".join(f"{name}.epochs={ph.epochs:g}" for name, ph in phases)
            out.append(f"epochs {epochs:g} is not used by {self.name}: every phase has its own ({own}); set those "
                       f"instead (--set {phases[0][0]}.epochs=N)")
        if eps is not None and not self.trains_on_eps(settings):
            out.append(f"eps {eps:g} does not change how {self.name} trains (no adversarial examples with these "
                       "settings); it only sets the validation attack that selects checkpoints")
        return out

    # ---- what it will cost ------------------------------------------------------------------------------------
    def passes_per_image(self, settings: MethodSettings, phase: str, *, objective_passes: float | None,
                         dataset: str | None) -> float:
        """Forward + backward passes per training image and step of ``phase``: the task's objective's for a method
        that trains with it, 1 + its PGD steps for a method with ``pgd_steps``, else 1 (natural training).
        Methods whose phases differ override this."""
        if self.uses_objective:
            return float(objective_passes or 1.0)
        steps = getattr(settings, "pgd_steps", None)
        return 1.0 + float(steps) if isinstance(steps, int) else 1.0

    def phases(self, settings: MethodSettings) -> list[tuple[str, PhaseSettings]]:
        """The training phases a run goes through, in order: every :class:`PhaseSettings` of the settings."""
        return [(k, v) for k, v in settings if isinstance(v, PhaseSettings)]

    def work(self, settings: MethodSettings, rates: Sequence[float | None], *, epochs: float, n_train: int,
             objective_passes: float | None = None, dataset: str | None = None, val_size: int = 1000,
             val_steps: int = 10) -> list[PhaseWork]:
        """What pruning to every rate of ``rates`` costs, phase by phase, before it runs (see :class:`PhaseWork`):
        an incremental method runs its phases once per step of its rate path, any other once per rate. ``epochs``
        is the task's epochs (a phase without its own), ``n_train`` the training images it sees."""
        set_rates = sorted(float(r) for r in rates if r is not None)
        runs = len(self.rate_path(set_rates, settings)) if self.incremental(settings) and set_rates else len(rates)
        out = []
        for name, ph in self.phases(settings):
            e = float(epochs if ph.epochs is None else ph.epochs)
            if e <= 0 or runs == 0:
                continue
            per_image = self.passes_per_image(settings, name, objective_passes=objective_passes, dataset=dataset)
            passes = training_passes(epochs=e, n_train=n_train, batch_size=ph.batch_size, per_image=per_image,
                                     val_size=val_size, val_steps=val_steps, val_robust=ph.select == "val_robust")
            out.append(PhaseWork(name, runs * passes))
        return out

    # ---- the entry ----------------------------------------------------------------------------------------
    def prune(self, model: nn.Module, task: PruneTask, rate: float | None = None,
              settings: Mapping[str, Any] | MethodSettings | None = None) -> PruneResult:
        """Prune ``model`` in place under ``task`` to compression ``rate`` (None for a learned rate)."""
        s = self.settings(settings)
        self.check_task(task)
        self.check_budget(s, epochs=task.epochs, n_train=len(task.train))
        r = self.check_rate(rate, task.start_rate)
        self.check_max_rate(model, r)
        if self.needs_eps:
            task.need_eps(self.name)
        t0 = time.perf_counter()
        result = self.run(model, task, r, s)
        result.wall_time = time.perf_counter() - t0
        result.times.setdefault("total", result.wall_time)
        return result

    def prune_many(self, model: nn.Module, task: PruneTask, rates: Sequence[float | None],
                   settings: Mapping[str, Any] | MethodSettings | None = None) -> Iterator[PruneResult]:
        """One result per rate. Default: each rate pruned from a copy of ``model`` as given."""
        s = self.settings(settings)
        self.check_task(task)
        self.check_budget(s, epochs=task.epochs, n_train=len(task.train))
        for rate in rates:
            yield self.prune(copy.deepcopy(model), task, rate, s)

    def check_budget(self, settings: MethodSettings, *, epochs: float, n_train: int) -> None:
        """Refuse, before any work, a phase whose budget rounds to 0 gradient steps on ``n_train`` images (``epochs``:
        the task's, for phases without their own); the error names the phase and the option that sets it."""
        for name, ph in self.phases(settings):
            e = float(epochs if ph.epochs is None else ph.epochs)
            try:
                _epochs_and_steps(e, n_train, ph.batch_size)
            except ConfigError as exc:
                how = "--epochs / prune_epochs" if ph.epochs is None else f"--set {name}.epochs=N / method_settings"
                raise ConfigError(f"{self.name}, phase {name!r} ({how}): {exc}") from None

    def check_task(self, task: PruneTask) -> None:
        """Nothing given is silently ignored: an objective for a method that trains with its own is an error that
        says what the method uses instead."""
        if task.objective is not None and not self.uses_objective:
            own = [k for k in ("loss", "pgd_steps", "beta", "alpha", "tau") if k in self.Settings.model_fields]
            raise ConfigError(
                f"{self.name} trains with its own objective, so an objective given to it would be ignored; drop "
                f"--objective / objective= and set the method's own settings instead"
                + (f" ({', '.join(own)}; see `robustprune list methods --settings {self.name}`)" if own else ""))

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: Any) -> PruneResult:
        raise NotImplementedError

    def result(self, model: nn.Module, masks: MaskSet, rate: float | None, settings: MethodSettings,
               **fields: Any) -> PruneResult:
        """A :class:`PruneResult` with the common fields filled in (masks applied, achieved compression)."""
        masks.apply(model)
        res = PruneResult(model=model, masks=masks, method=self.name, rate=rate, rate_kind=self.rate_kind,
                          group=self.group, achieved_compression=achieved_compression(model),
                          settings=settings.model_dump(mode="json"), **fields)
        if res.mechanism:
            res.convergence = {**res.convergence, "mechanism": res.mechanism}
        return res

    def describe(self) -> str:
        return f"{self.description} [{self.paper.key}]"


METHODS: Registry[PruningMethod] = Registry("method")


def register_method(method: PruningMethod) -> PruningMethod:
    """Add ``method`` to :data:`METHODS` (what the CLI, studies and :func:`robustprune.prune` accept)."""
    if not method.name:
        raise ValueError("a pruning method needs a name")
    METHODS.add(method.name, method, help=method.describe())
    return method


def get_method(name: str) -> PruningMethod:
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()
