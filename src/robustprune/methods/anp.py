"""The Bayesian pruning methods of Madaan2020 as :class:`PruningMethod` s: BP, ANP, ANP-VS and PAT with
Beta-Bernoulli dropout gates (Lee2019), and BP / ANP with variational information bottleneck gates (Dai2018,
Madaan2020 App. B). Unit masks are learned on the model; the compression rate is learned too. The result is a plain
checkpoint of the same architecture with the test-time masks folded into the weights (pruned units exactly zero,
their weight masks stored): :func:`robustprune.methods.bayesian.fold_gates`.
"""

from __future__ import annotations

import time

from pydantic import Field
from torch import nn

from robustprune.methods.bayesian import bayesian_prune, fold_gates
from robustprune.methods.interface import PAPERS, MethodSettings, PhaseSettings, PruneResult, PruneTask
from robustprune.methods.interface import PruningMethod, history_of, mechanism, phase, register_method, setting
from robustprune.methods.interface import steps_of
from robustprune.sparsity import MaskSet


#: Training-set sizes N of the datasets the papers tuned gamma on (Madaan2020 Eq. 11 scales the KL by gamma / N).
TRAIN_SET_SIZE = {"mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257}
#: ANP-VS reference code README: the vulnerability-suppression weight per dataset.
VS_LAMBDA = {"mnist": 1e-3, "fashion-mnist": 1e-3, "cifar10": 1e-4, "cifar100": 0.1}


class BayesianSettings(MethodSettings):
    gamma: float = setting(1.0, "Madaan2020 App. C (gamma in {1, 4, 8, 10, 12} for LeNet-5-Caffe)",
                           "KL scale: the KL term is multiplied by gamma / N", ge=0)
    kl_n: int | None = setting(None, "Madaan2020 Eq. 11 (N = the full training set the paper's gamma was tuned on: "
                               "60,000 for MNIST)", "the N of gamma / N (None: the dataset's full training-set size, "
                               "or the number of images given for an unknown dataset)", ge=1)
    beta: float = setting(1.0 / 3.0, "robustprune (Madaan2020 Eq. 6 leaves the clean/adversarial mix open)",
                          "weight of the clean loss in the weights' loss (ANP)", ge=0, le=1)
    pgd_steps: int = setting(10, "Madaan2020 §5 (PGD adversarial training)", "PGD steps of the training attack",
                             ge=1)
    mask_lr_factor: float = setting(10.0, "Madaan2020 App. C (weights learn 0.1x the variational parameters' rate)",
                                    "masks' learning rate / the weights'", gt=0)
    gate_init: float | None = setting(None, "Lee2019 reference code (a_uc = -1, E[pi] = 0.24)",
                                      "initial a_uc of Beta-Bernoulli gates (larger keeps more units at the start)")
    train: PhaseSettings = phase("Madaan2020 App. C (Adam; batch 64)", "weights and masks trained together",
                                 optimizer="adam", lr=1e-3, batch_size=64, schedule="constant")


class ANPVSSettings(BayesianSettings):
    vs_lambda: float | None = Field(None, ge=0, json_schema_extra={
        "source": "ANP-VS reference code README (0.001 MNIST, 0.0001 CIFAR-10, 0.1 CIFAR-100)"},
        description="weight of the vulnerability suppression term (None: the README's value for the dataset)")


class PATSettings(BayesianSettings):
    at: PhaseSettings = phase("Madaan2020 §5 (PAT: adversarial training with the masks frozen)",
                              "PGD adversarial training after BP, masks frozen", optimizer="adam", lr=1e-3,
                              batch_size=64, schedule="constant")


class BayesianMethod(PruningMethod):
    rate_kind = "learned"
    group = "filter"
    paper = PAPERS["Madaan2020"]

    def __init__(self, name: str, kind: str, gate: str, description: str) -> None:
        self.name, self.kind, self.gate, self.description = name, kind, gate, description
        self.Settings = {"anp-vs": ANPVSSettings, "pat": PATSettings}.get(kind, BayesianSettings)
        self.needs_eps = kind in ("anp", "anp-vs", "pat")

    def passes_per_image(self, settings: BayesianSettings, phase: str, *, objective_passes: float | None,
                         dataset: str | None) -> float:
        """BP (and PAT's first phase) trains on clean data; ANP adds k PGD passes and the clean / adversarial pair
        (Eq. 6); PAT's adversarial phase is PGD-AT."""
        if phase == "at":
            return 1.0 + settings.pgd_steps
        if self.kind in ("bp", "pat"):
            return 1.0
        return 2.0 + settings.pgd_steps

    def run(self, model: nn.Module, task: PruneTask, rate: float | None, settings: BayesianSettings) -> PruneResult:
        cfg = settings.train.train_config(task)
        dataset = str(task.dataset or "").lower()
        kl_n = settings.kl_n or TRAIN_SET_SIZE.get(dataset, len(task.train))
        kw = dict(train=task.train, val=task.val, cfg=cfg, eps=task.eps, gamma=settings.gamma, beta=settings.beta,
                  steps=settings.pgd_steps, val_eps=task.eps, augment=task.augment, gate=self.gate,
                  mask_lr_factor=settings.mask_lr_factor, n_train=kl_n,
                  layers=self.scope_layers(model, settings, group="unstructured"))
        if isinstance(settings, ANPVSSettings):
            kw["lam"] = settings.vs_lambda if settings.vs_lambda is not None else VS_LAMBDA.get(dataset, 1e-3)
        if isinstance(settings, PATSettings):
            kw["at_cfg"] = settings.at.train_config(task, seed_offset=1)
        if settings.gate_init is not None and self.gate == "bbd":
            kw["gate_kwargs"] = {"a_uc_init": settings.gate_init}
        t0 = time.perf_counter()
        res = bayesian_prune(model, self.kind, **kw)
        t_train = time.perf_counter() - t0
        folded, fmasks = fold_gates(model, example=task.train.x[:2])
        stats = dict(res.stats, unit_sparsity=res.unit_sparsity, kl_scale=res.kl_scale, kl_n=kl_n,
                     vs_lambda=kw.get("lam"),
                     units=[list(u) for u in res.units])
        moved = stats.get("gates_moved_fraction")
        # The masks did not train when (almost) no gate moved and nothing was pruned: not converged.
        converged = None if moved is None else (False if moved < 0.05 and res.unit_sparsity == 0 else None)
        history = {name: history_of(r) for name, r in res.phases.items()}
        epochs = float(sum(r.history[-1].get("epoch", len(r.history)) if r.history else 0
                           for r in res.phases.values()))
        gate_steps = sum(steps_of(r) for k, r in res.phases.items() if k != "at")
        mech = mechanism("learned rate: gradient steps that train the gates (else the masks are their "
                         "initialisation and the rate is not learned)", gate_steps > 0, gate_steps=gate_steps,
                         gates_moved_fraction=moved)
        return self.result(folded, MaskSet(fmasks), None, settings, history=history, mechanism=mech,
                           times={"train": t_train, "fold": time.perf_counter() - t0 - t_train},
                           convergence=stats, converged=converged,
                           steps=sum(steps_of(r) for r in res.phases.values()), epochs=epochs,
                           extras={"units": res.units_string(), "units_dense": res.units_string(dense=True)})


for _name, _kind, _gate, _help in (
    ("bp-bbd", "bp", "bbd", "BP: Beta-Bernoulli dropout masks learned on clean data"),
    ("anp-bbd", "anp", "bbd", "ANP: Beta-Bernoulli masks on the adversarial loss, weights on the clean/adv mix"),
    ("anp-vs-bbd", "anp-vs", "bbd", "ANP-VS: ANP + vulnerability suppression on the weights"),
    ("pat-bbd", "pat", "bbd", "PAT: Bayesian pruning, masks frozen, then PGD adversarial training"),
    ("bp-vib", "bp", "vib", "BP with variational information bottleneck masks on clean data (App. B)"),
    ("anp-vib", "anp", "vib", "ANP-VIB: VIB masks on the adversarial loss, weights on the clean/adv mix (App. B)"),
):
    register_method(BayesianMethod(_name, _kind, _gate, _help))
