"""Fake but realistic results databases for the report tests, written through ResultsStore (the runner's schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from robustprune.study import ResultsStore
from robustprune.utils import config_hash

DATASET, ARCH = "fashion-mnist", "lenet5-caffe"


def pgd_config(steps: int = 20) -> dict[str, Any]:
    return {"name": "pgd", "steps": steps, "restarts": 1, "loss": "ce"}


def attack(name: str, eps: float, *, config: dict[str, Any] | None = None, transfer: bool = False) -> dict[str, Any]:
    cfg = dict(config or ({"name": name} if name != "pgd" else pgd_config()))
    if transfer:
        cfg["transfer_from"] = "base"
    return {"attack": ("transfer-" if transfer else "") + name, "norm": "Linf", "eps": eps, "eps_str": f"{eps:g}",
            "attack_config": cfg, "attack_hash": config_hash(cfg)}


def add_model(store: ResultsStore, out: Path, *, method: str, seed: int, accs: dict[tuple, float], clean: float,
              rate: float | None = 1.0, rate_kind: str = "set", group: str = "unstructured", n: int = 100,
              settings: dict[str, Any] | None = None, parent: str | None = None, achieved: float | None = None,
              flags: list[str] | None = None, converged: int | None = None,
              convergence: dict[str, Any] | None = None, masks: bool = True, train_epochs: float = 2.0,
              train_steps: int = 120, model_key: str | None = None) -> str:
    """One model (``seed``) with its rows: ``accs`` maps ``(attack name, eps, steps or None, transfer)`` to robust
    accuracy. Returns its model_id."""
    unpruned = method == "unpruned"
    if unpruned:
        rate, rate_kind, parent = 1.0, "none", None
    settings = settings or {}
    key_cfg = {"method": method, "rate": rate, "rate_kind": rate_kind, "settings": settings, "parent": parent}
    model_key = model_key or config_hash(key_cfg)
    model_id = config_hash({**key_cfg, "seed": seed})
    achieved = achieved if achieved is not None else (rate or 1.0)
    ckpt = None
    if masks and not unpruned:
        from safetensors.torch import save_file

        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(seed)
        tensors = {"w": torch.zeros(1), "mask.conv1.weight": torch.rand(8, 1, 3, 3, generator=g) < 1 / achieved,
                   "mask.fc.weight": torch.rand(10, 32, generator=g) < 1 / achieved}
        path = out / "checkpoints" / f"{model_id}.safetensors"
        save_file(tensors, str(path))
        ckpt = str(path.relative_to(out))
    parent_id = None if parent is None else config_hash({"method": "unpruned", "rate": 1.0, "rate_kind": "none",
                                                         "settings": {}, "parent": None, "seed": seed})
    store.put_model({"model_id": model_id, "model_key": model_key, "study": "test", "kind": "base" if unpruned
                     else "pruned", "parent_id": parent_id, "dataset": DATASET, "architecture": ARCH,
                     "method": method, "group": "none" if unpruned else group, "rate": rate,
                     "rate_kind": "none" if unpruned else rate_kind, "settings": settings, "seed": seed,
                     "checkpoint": ckpt, "converged": converged, "convergence": convergence or {},
                     "flags": flags or [], "wall_time": 3.0 + (rate or 5.0), "train_epochs": train_epochs,
                     "train_steps": train_steps})
    common = {"model_id": model_id, "model_key": model_key, "study": "test", "dataset": DATASET,
              "architecture": ARCH, "method": method, "group": "none" if unpruned else group,
              "scope": "none" if unpruned else "local", "score": "none" if unpruned else "magnitude",
              "schedule": "none" if unpruned else "iterative", "rate": rate,
              "rate_kind": "none" if unpruned else rate_kind, "settings": settings, "converged": converged,
              "flags": flags or [], "achieved_sparsity": 1 - 1 / achieved, "achieved_compression": achieved,
              "params_total": 1000, "params_nonzero": int(1000 / achieved), "flops_dense": 2_000_000,
              "flops_effective": int(2_000_000 / achieved), "clean_acc": clean, "n_eval": n, "seed": seed,
              "train_wall_time": 3.0 + (rate or 5.0), "train_epochs": train_epochs, "train_steps": train_steps,
              "eval_wall_time": 0.5, "code_version": "test"}
    rows = [{**common, "attack": "clean", "norm": None, "eps": 0.0, "eps_str": "0", "attack_hash": "clean",
             "attack_config": {}, "robust_acc": clean}]
    for (name, eps, steps, transfer), acc in accs.items():
        cfg = pgd_config(steps) if name == "pgd" else {"name": name}
        rows.append({**common, **attack(name, eps, config=cfg, transfer=transfer), "robust_acc": acc})
    store.put_results(rows)
    return model_id


def write_spec(out: Path, store: ResultsStore, name: str = "test") -> None:
    spec = {"name": name, "datasets": [DATASET], "seeds": [0, 1]}
    (out / "study.json").write_text(json.dumps(spec, indent=2))
    store.set_meta("spec", spec)
    store.set_meta("command", ["robustprune", "study", "tiny.yaml", "--out", str(out)])
    store.set_meta("started_at", 1.7e9)
    store.set_meta("study_wall_time", 12.5)
