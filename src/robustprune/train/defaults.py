"""The one set of defaults for training a base model, shared by ``robustprune train``, a study's ``base_objective``
and ``base_train``, and Python (:class:`robustprune.train.TrainConfig`'s own defaults), each with its source."""

from __future__ import annotations

BASE_OBJECTIVE = "fast-at"
"""Fast adversarial training, FGSM with a random start and step 1.25 eps (Wong et al. 2020, "Fast is better than
free", Alg. 3): robust enough to prune (61 % APGD at eps 0.1 on Fashion-MNIST after 6 epochs) at 2 passes per image
where PGD-10 training costs 11."""

BASE_TRAIN: dict[str, object] = {
    "epochs": 6,           # robustprune: the best validation PGD epoch of LeNet-5-Caffe fast-AT on Fashion-MNIST is 5-6
    "batch_size": 128,     # Madry et al. 2018 reference code (CIFAR-10), Wong et al. 2020
    "optimizer": "adam",   # Madaan2020 App. C (Adam for LeNet-5-Caffe)
    "lr": 1e-3,            # Madaan2020 App. C (lr 1e-3 for LeNet-5-Caffe)
    "weight_decay": 0.0,   # Madaan2020 App. C (no weight decay on LeNet-5-Caffe)
    "schedule": "cosine",  # robustprune (Wong et al. 2020 use a cyclic schedule; cosine is its smooth cousin)
}
"""Optimiser and budget of a base model's training."""

SOURCES = {
    "objective": "Wong et al. 2020, Alg. 3 (FGSM with random start)",
    "epochs": "robustprune (best validation PGD epoch of LeNet-5-Caffe on Fashion-MNIST: 5-6)",
    "batch_size": "Madry et al. 2018 / Wong et al. 2020 (128)",
    "optimizer": "Madaan2020 App. C (Adam for LeNet-5-Caffe)",
    "lr": "Madaan2020 App. C (1e-3)",
    "weight_decay": "Madaan2020 App. C (none)",
    "schedule": "robustprune (cosine)",
}
"""Where each default comes from, as ``robustprune train --help`` and docs/architecture.md say."""
