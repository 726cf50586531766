"""Study specification: a validated description of a grid of experiments.

A study is  datasets x architectures x seeds  base models, each pruned by every method to every compression rate,
and every model (the unpruned base included) evaluated under every attack at every budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from robustprune.errors import ConfigError
from robustprune.train import TrainConfig, validated
from robustprune.utils import parse_eps


class ObjectiveSpec(BaseModel):
    """A training objective by registry name and its settings (ε in pixel units, e.g. 0.1 or "8/255")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "pgd-at"
    eps: float | None = None
    """None: the dataset's default L∞ ε."""
    alpha: float | None = None
    steps: int | None = Field(None, ge=1, le=1000)
    beta: float | None = None

    @field_validator("eps", "alpha", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> Any:
        return None if v is None else parse_eps(v)

    def kwargs(self, default_eps: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name != "natural":
            out["eps"] = self.eps if self.eps is not None else default_eps
        for k in ("alpha", "steps", "beta"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


class AttackSpec(BaseModel):
    """An evaluation attack at one or more budgets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "pgd"
    eps: tuple[float, ...] = ()
    """Budgets in pixel units; empty: the dataset's default L∞ ε."""
    steps: int | None = Field(20, ge=1, le=100_000)
    restarts: int | None = Field(1, ge=1, le=1000)
    alpha: float | None = None
    """Absolute step size; None: 2.5 ε / steps (Madry et al.)."""
    loss: str | None = None
    random_start: bool | None = None

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> Any:
        if isinstance(v, (int, float, str)):
            v = [v]
        return tuple(parse_eps(e) for e in v)

    @model_validator(mode="after")
    def _check(self) -> "AttackSpec":
        if any(not 0 < e <= 1 for e in self.eps):
            raise ValueError(f"attack budgets must lie in (0, 1] (pixel units); got {list(self.eps)}")
        return self

    def settings(self) -> dict[str, Any]:
        """The settings that define the attack (everything but ε)."""
        return {k: v for k, v in self.model_dump().items() if k != "eps" and v is not None}


class RecipeSettings(BaseModel):
    """Multi-phase recipes. ADMM (seed 001 AdvPrune ``admm-*``, seed 004 PwoA ``pwoa-*``): each target rate of
    ``recipe_compression`` is pruned from the base model (one-shot) by an ADMM phase (``admm_train``) then masked
    retraining (the study's ``finetune_train``). Bayesian (seed 000 ``anp-bbd``, ``anp-vs-bbd``, ``bp-bbd``,
    ``pat-bbd``, ``*-vib``): gates inserted into the base model and trained with ``bayes_train``; the compression
    rate is *learned* (one model per base model, stored with target rate 0 = "learned")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    admm_train: TrainConfig = TrainConfig(epochs=2, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0,
                                          schedule="constant", select="last", progress=True)
    rho: float = Field(0.01, gt=0)
    rho_factor: float = Field(1.35, ge=1)
    rho_max: float | None = Field(1.0, gt=0)
    update_every: int | Literal["auto"] = "auto"
    """Z/U update interval in ``update_unit``s; "auto": the interval with which rho reaches ``rho_max`` at the end
    of the ADMM phase, as seed 004's schedule does (see ``methods.admm.auto_update_every``)."""
    update_unit: Literal["step", "epoch"] = "step"
    pgd_steps: int = Field(10, ge=1)
    """AdvPrune's PGD steps (ε from ``finetune_objective`` or the dataset default)."""
    tau: float | None = Field(None, gt=0)
    """PwoA temperature (None: seed 004 Table IX, 30)."""
    use_hbar: bool = True
    mix_ratio: float = Field(0.0, ge=0, le=1)
    ce_weight: float = Field(0.0, ge=0)
    bayes_train: TrainConfig = TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0,
                                           schedule="constant", progress=True)
    gamma: float = Field(1.0, ge=0)
    """Bayesian recipes: KL scale gamma/N (seed 000 App. C sweeps {1, 4, 8, 10, 12} on LeNet-5)."""
    beta: float = Field(1.0 / 3.0, ge=0, le=1)
    """ANP: weight of the clean loss in the weights' loss (seed 000 Eq. 6)."""
    vs_lambda: float | None = Field(None, ge=0)
    """ANP-VS: weight of the vulnerability term (None: 1.0, the method's default)."""
    mask_lr_factor: float = Field(10.0, gt=0)
    """Bayesian recipes: the masks' learning rate / the weights' (seed 000 App. C: 10). A gate needs its ``a_uc``
    to fall by ~6 to be pruned, so short runs need a larger factor."""
    gate_init: float | None = None
    """Gates' initial ``a_uc`` (None: the reference -1, E[pi] = 0.24); larger keeps more units at the start, which
    a gated *pretrained* base model needs (softplus(a_uc) = a, E[pi] = a / (a + 1))."""


class StudySpec(BaseModel):
    """The whole grid. Defaults are the quick main job on Fashion-MNIST (about 10 minutes on 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    datasets: tuple[str, ...] = ("fashion-mnist",)
    data_dir: str | None = None
    architectures: tuple[str, ...] = ("lenet5-caffe",)
    width: float = Field(1.0, gt=0, le=64)
    seeds: tuple[int, ...] = (0,)
    train_limit: int | None = Field(None, ge=10)
    """Use only this many training images (after carving out validation); None: all."""
    val_size: int = Field(5000, ge=0)
    eval_n: int = Field(1000, ge=1)
    """Test points for clean and robust accuracy (the first n of the test split)."""
    eval_batch_size: int = Field(500, ge=1)
    base_objective: ObjectiveSpec = ObjectiveSpec(name="fast-at")
    base_train: TrainConfig = TrainConfig(epochs=6, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
                                          schedule="cosine", progress=True)
    methods: tuple[str, ...] = (
        "magnitude-unstructured-global",   # seed 003 (pruning in the face of adversaries)
        "magnitude-unstructured-local",    # seed 003
        "magnitude-filter-local",          # seed 003
        "admm-irregular",                  # seed 001 (AdvPrune: ADMM + adversarial training)
        "pwoa-irregular",                  # seed 004 (PwoA: ADMM + self-distillation + HBaR, no adversarial examples)
        "anp-bbd",                         # seed 000 (ANP: Beta-Bernoulli masks learned on adversarial examples)
    )
    compression: tuple[float, ...] = (1, 2, 4, 8, 16)
    schedule: Literal["iterative", "one-shot"] = "iterative"
    finetune_objective: ObjectiveSpec = ObjectiveSpec(name="fast-at")
    finetune_train: TrainConfig = TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0,
                                              schedule="cosine", progress=True)
    finetune_limit: int | None = Field(20000, ge=10)
    """Training images per fine-tuning step (a seeded subset; None: all)."""
    attacks: tuple[AttackSpec, ...] = (AttackSpec(name="pgd", eps=(0.05, 0.1, 0.15), steps=20, restarts=1),)
    recipe: RecipeSettings = RecipeSettings(
        admm_train=TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0,
                               schedule="constant", select="last", progress=True),
        pgd_steps=2, gamma=10.0, mask_lr_factor=200.0, gate_init=2.0)
    """Settings of the multi-phase recipes (``admm-*`` = AdvPrune, ``pwoa-*``, Bayesian) when ``methods`` names
    them. The main job's: one ADMM epoch, PGD-2 for AdvPrune and ANP, and for ANP (one epoch from the base model)
    a KL scale, mask learning rate and initial keep probability that let masks move within that epoch."""
    recipe_compression: tuple[float, ...] | None = (4, 16)
    """Rates of the ADMM recipes, each pruned from the base model separately (None: ``compression``)."""
    transfer: bool = True
    """Black-box rows: every budget attack's examples crafted once on the unpruned base model of the same
    dataset/architecture/seed and applied to each pruned model (seed 000 Table 1, seed 001 Table 8)."""
    vulnerability: bool = True
    """Latent vulnerability (seed 000 Eq. 1-2) of every model on the first L∞ budget attack's examples at the
    dataset's ε (else its middle budget), white-box and (with ``transfer``) black-box."""

    @field_validator("compression")
    @classmethod
    def _rates(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("give at least one compression rate (1 = unpruned)")
        bad = [r for r in v if r < 1]
        if bad:
            raise ValueError(f"compression rates are >= 1 (1/c of the weights remain); got {bad}")
        return tuple(sorted(set(float(r) for r in v)))

    @field_validator("recipe_compression")
    @classmethod
    def _recipe_rates(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is None:
            return None
        bad = [r for r in v if r < 1]
        if bad:
            raise ValueError(f"recipe compression rates are >= 1 (1/c of the weights remain); got {bad}")
        return tuple(sorted(set(float(r) for r in v)))

    def recipe_rates(self) -> list[float]:
        rates = self.recipe_compression if self.recipe_compression is not None else self.compression
        return [r for r in rates if r > 1]

    @model_validator(mode="after")
    def _names(self) -> "StudySpec":
        # Unknown names fail here, before any work starts.
        from robustprune.attacks import ATTACKS
        from robustprune.data import DATASETS
        from robustprune.methods import METHODS
        from robustprune.models import MODELS
        from robustprune.objectives import OBJECTIVES

        for d in self.datasets:
            DATASETS.get(d)
        for a in self.architectures:
            MODELS.get(a)
        from robustprune.errors import UnknownNameError
        from robustprune.methods import RECIPES

        for m in self.methods:
            if m not in METHODS and not is_study_recipe(m):
                raise UnknownNameError(
                    f"unknown method {m!r}; choose one of: {', '.join(METHODS.names())}, or a recipe: "
                    f"{', '.join(n for n in RECIPES.names() if is_study_recipe(n))} "
                    "(see `robustprune list methods`)")
        for o in (self.base_objective, self.finetune_objective):
            OBJECTIVES.get(o.name)
        for a in self.attacks:
            ATTACKS.get(a.name)
        return self


STUDY_RECIPE_PREFIXES = ("admm-", "pwoa-")
LEARNED_RATE = 0.0
"""``target_compression`` of a model whose rate was learned (Bayesian recipes), not set."""


def is_study_recipe(name: str) -> bool:
    """True for the registered recipes a study runs: ADMM ones to each target rate (AdvPrune, PwoA), Bayesian ones
    (seed 000) once, to the rate they learn."""
    from robustprune.methods import RECIPES

    if name not in RECIPES:
        return False
    return name.lower().startswith(STUDY_RECIPE_PREFIXES) or RECIPES.get(name).family == "bayesian"


def is_learned_rate_recipe(name: str) -> bool:
    from robustprune.methods import RECIPES

    return name in RECIPES and RECIPES.get(name).family == "bayesian"


def load_study_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read a YAML/JSON study file (or the defaults when ``path`` is None) and apply ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"study file {p} not found; pass the path of a YAML study file")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"study file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"study file {p} must hold a mapping of settings at the top level")
        data.update(loaded)
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    return validated(StudySpec, data, "study spec")
