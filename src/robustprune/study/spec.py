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
    """ADMM recipes (seed 001 AdvPrune, seed 004 PwoA): each target rate is pruned from the base model (one-shot)
    by an ADMM phase (``admm_train``) then masked retraining (the study's ``finetune_train``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    admm_train: TrainConfig = TrainConfig(epochs=2, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0,
                                          schedule="constant", select="last", progress=True)
    rho: float = Field(0.01, gt=0)
    rho_factor: float = Field(1.35, ge=1)
    rho_max: float | None = Field(1.0, gt=0)
    update_every: int = Field(25, ge=1)
    update_unit: Literal["step", "epoch"] = "step"
    pgd_steps: int = Field(10, ge=1)
    """AdvPrune's PGD steps (ε from ``finetune_objective`` or the dataset default)."""
    tau: float | None = Field(None, gt=0)
    """PwoA temperature (None: seed 004 Table IX, 30)."""
    use_hbar: bool = True
    mix_ratio: float = Field(0.0, ge=0, le=1)
    ce_weight: float = Field(0.0, ge=0)


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
        "magnitude-unstructured-global",
        "magnitude-unstructured-local",
        "magnitude-kernel-global",
        "magnitude-filter-local",
        "random-unstructured-local",
    )
    compression: tuple[float, ...] = (1, 2, 4, 8, 16)
    schedule: Literal["iterative", "one-shot"] = "iterative"
    finetune_objective: ObjectiveSpec = ObjectiveSpec(name="fast-at")
    finetune_train: TrainConfig = TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0,
                                              schedule="cosine", progress=True)
    finetune_limit: int | None = Field(20000, ge=10)
    """Training images per fine-tuning step (a seeded subset; None: all)."""
    attacks: tuple[AttackSpec, ...] = (AttackSpec(name="pgd", eps=(0.05, 0.1, 0.15), steps=20, restarts=1),)
    recipe: RecipeSettings = RecipeSettings()
    """Settings of the multi-phase recipes (``admm-*`` = AdvPrune, ``pwoa-*``) when ``methods`` names them."""

    @field_validator("compression")
    @classmethod
    def _rates(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("give at least one compression rate (1 = unpruned)")
        bad = [r for r in v if r < 1]
        if bad:
            raise ValueError(f"compression rates are >= 1 (1/c of the weights remain); got {bad}")
        return tuple(sorted(set(float(r) for r in v)))

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
                    f"unknown method {m!r}; choose one of: {', '.join(METHODS.names())}, or an ADMM recipe: "
                    f"{', '.join(n for n in RECIPES.names() if n.startswith(('admm-', 'pwoa-')))} "
                    "(see `robustprune list methods`)")
        for o in (self.base_objective, self.finetune_objective):
            OBJECTIVES.get(o.name)
        for a in self.attacks:
            ATTACKS.get(a.name)
        return self


STUDY_RECIPE_PREFIXES = ("admm-", "pwoa-")


def is_study_recipe(name: str) -> bool:
    """True for the registered recipes a study runs to a target compression rate (AdvPrune, PwoA)."""
    from robustprune.methods import RECIPES

    return name in RECIPES and name.lower().startswith(STUDY_RECIPE_PREFIXES)


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
