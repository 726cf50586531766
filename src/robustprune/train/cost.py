"""What a training run costs before it runs, in passes: one forward and one backward pass over one image (the unit
of the study's remaining-time estimate, ``robustprune.study.eta``)."""

from __future__ import annotations

import math


def training_passes(*, epochs: float, n_train: int, batch_size: int, per_image: float, val_size: int,
                    val_steps: int, val_robust: bool = True) -> float:
    """A :func:`robustprune.train.fit` run: every step's batch x passes per image, plus each epoch's validation
    (PGD-``val_steps`` + the clean pass on ``val_size`` points when selecting on robust accuracy)."""
    if epochs <= 0 or n_train <= 0:
        return 0.0
    train = math.ceil(epochs * n_train / batch_size) * batch_size * per_image
    val = math.ceil(epochs) * min(val_size, n_train) * ((val_steps + 1) if val_robust else 1 / 3)
    return train + val
