"""Validated training configuration."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robustprune.errors import ConfigError
from robustprune.train.defaults import BASE_TRAIN


class TrainConfig(BaseModel):
    """How to optimise: epochs, optimiser, schedule. Everything about *what* to optimise is the objective."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The defaults are the one set of base-training defaults (robustprune.train.defaults, with their sources)
    epochs: int = Field(BASE_TRAIN["epochs"], ge=0, le=10_000)
    batch_size: int = Field(BASE_TRAIN["batch_size"], ge=1, le=65_536)
    optimizer: Literal["sgd", "adam"] = BASE_TRAIN["optimizer"]  # type: ignore[assignment]
    lr: float = Field(BASE_TRAIN["lr"], gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(BASE_TRAIN["weight_decay"], ge=0, le=1)
    schedule: Literal["constant", "step", "cosine"] = BASE_TRAIN["schedule"]  # type: ignore[assignment]
    milestones: tuple[float, ...] = (0.5, 0.75)
    """For the step schedule: fractions of the total epochs (0.5 = halfway) where lr *= gamma."""
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0)
    seed: int = 0
    select: Literal["val_robust", "val_clean", "last"] = "val_robust"
    """Checkpoint selection: best validation robust accuracy, best validation clean accuracy, or the last epoch."""
    val_size: int = Field(1000, ge=0)
    """Validation points used for selection each epoch (from the validation split, never the test split)."""
    val_attack_steps: int = Field(10, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    progress: bool = True
    precision: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
    """Numerical precision of the phase (``robustprune.precision``): auto (tf32 on CUDA, fp32 on the CPU), fp32
    (TF32 off), tf32 or bf16 autocast."""
    channels_last: bool | None = None
    """Memory layout of convolutional models while training; None: channels_last for bf16 on CUDA."""
    compile: bool = False
    """Run the forward passes through ``torch.compile`` (needs a working compiler toolchain)."""

    @field_validator("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", mode="before")
    @classmethod
    def _finite(cls, v: object) -> object:
        # NaN fails every range check with a misleading message ("should be <= 10"); say what is wrong instead
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            raise ValueError("is not a number (NaN)" if math.isnan(v) else "must be a finite number")
        if isinstance(v, str) and v.strip().lower() in ("nan", "+nan", "-nan"):
            raise ValueError("is not a number (NaN)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError("milestones are fractions of training in (0, 1]")
        return self


def validated(model_cls, data: dict, what: str):
    """Build a pydantic model from ``data``; turn a ValidationError into a one-line ConfigError."""
    try:
        return model_cls(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        inp = err.get("input")
        shown = "" if isinstance(inp, dict) or f"{inp!r}" in msg else f" (got {inp!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")  # a whole-model check names its keys itself
    return "; ".join(parts)
