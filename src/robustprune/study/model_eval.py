"""Evaluation of one study model: clean and white-box rows of every attack, black-box rows transferred from the
base model, latent vulnerability, and the row-based sanity checks; results go to the study's database."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import nn

from robustprune.data import Splits
from robustprune.evaluation.run import size_metrics
from robustprune.models import model_for_dataset
from robustprune.precision import in_layout
from robustprune.provenance import code_version
from robustprune.study.spec import StudySpec
from robustprune.study.store import ResultsStore
from robustprune.utils import config_hash

STRUCTURE_COLUMNS = ("achieved_sparsity", "filters_removed", "flops_removed")
"""What a model lost, stored on its ``models`` row too (see :func:`robustprune.sparsity.structure_metrics`)."""


class ModelEvaluator:
    """Evaluates models of one study (caches the transfer examples crafted on each base model)."""

    def __init__(self, spec: StudySpec, device: torch.device, log, outcome) -> None:
        self.spec = spec
        self.device = device
        self.log = log
        self.outcome = outcome
        self.channels_last = False  # the layout of the model being evaluated (set by evaluate)

    def _vuln_key(self, splits: Splits) -> tuple[Any, str, float] | None:
        """(attack spec, attack hash, ε) whose examples the vulnerability is measured on: the first L∞ budget
        attack (a transferred one first, so the black-box vulnerability exists too), at the dataset's ε when it is
        one of its budgets, else at its middle budget."""
        from robustprune.evaluation.attack_info import attack_kwargs, info_for_spec, spec_name
        from robustprune.evaluation.run import _settings, budgets_for

        preferred = list(self.spec.transferred_attacks()) if self.spec.transfer else []
        for a in preferred + [a for a in self.spec.attacks if a not in preferred]:
            info = info_for_spec(a)
            if info.min_norm or info.norm != "Linf":
                continue
            budgets = sorted(budgets_for(a, info, splits.spec.eps_linf, None))
            eps = splits.spec.eps_linf if any(abs(b - splits.spec.eps_linf) < 1e-12 for b in budgets) \
                else budgets[len(budgets) // 2]
            return a, config_hash(_settings(attack_kwargs(info, a, eps), spec_name(a))), float(eps)
        return None

    def seed_transfer(self, examples: dict[str, Any]) -> None:
        """Transfer examples crafted elsewhere (a base unit's Ray task), by base model id, used instead of crafting
        them again."""
        self.__dict__.setdefault("_transfer_cache", {}).update(examples)

    def _transfer_examples(self, base_id: str, base_state: dict[str, torch.Tensor], splits: Splits, arch: str,
                           seed: int, width: float):
        """Every budget attack's examples crafted once on the unpruned base model (cached per base model)."""
        from robustprune.evaluation.transfer import craft_transfer
        from robustprune.utils import eps_to_str

        cache = self.__dict__.setdefault("_transfer_cache", {})
        if base_id not in cache:
            source = model_for_dataset(arch, splits.spec, width=width).to(self.device)
            source.load_state_dict(base_state)
            test = splits.test
            n = min(self.spec.eval_n, len(test))
            xs = in_layout(test.x[:n], self.channels_last)
            if self.channels_last:
                source.to(memory_format=torch.channels_last)
            vkey = self._vuln_key(splits) if self.spec.vulnerability else None
            v_es = eps_to_str(vkey[2]) if vkey else None
            keep = (lambda ah, es: es == v_es) if vkey else False  # x_keep only where vulnerability is measured
            t0 = time.perf_counter()
            cache[base_id] = craft_transfer(source, xs, test.y[:n], self.spec.transferred_attacks(),
                                            default_eps=splits.spec.eps_linf, batch_size=self.spec.eval_batch_size,
                                            seed=seed, source_id=base_id, keep_adv=keep)
            self.log(f"  transfer examples crafted on the base model {base_id} in {time.perf_counter() - t0:.0f}s")
        return cache[base_id]

    def _transfer_done(self, store: ResultsStore, model_id: str, splits: Splits, want_black: bool) -> bool:
        """Every transfer row (and the black-box vulnerability) of this model is stored: nothing to craft."""
        from robustprune.evaluation.attack_info import info_for_spec
        from robustprune.evaluation.run import budgets_for
        from robustprune.evaluation.transfer import TRANSFER_PREFIX

        expected = sum(len(budgets_for(a, info_for_spec(a), splits.spec.eps_linf, None))
                       for a in self.spec.transferred_attacks())
        have = len(store.results("model_id = ? AND attack LIKE ?", (model_id, TRANSFER_PREFIX + "%")))
        if have < expected:
            return False
        return not want_black or store.has_vulnerability(model_id, "black")

    def evaluate(self, store: ResultsStore, model_id: str, model: nn.Module, splits: Splits, base: dict[str, Any],
                 train_wall: float, source: tuple[str, dict[str, torch.Tensor]] | None = None,
                 channels_last: bool = False) -> None:
        """Clean and white-box rows of every attack; with ``source`` = (base id, base state) and ``transfer``,
        black-box rows from the base model; vulnerability (white / black); the row-based sanity checks. All of it
        in the study's ``eval_precision`` (strict fp32, TF32 off, by default), whatever the model trained in.
        ``channels_last``: the memory layout the attacks run in (speed only; the model is handed back in the
        default layout)."""
        from robustprune.precision import evaluation_precision, to_contiguous

        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
        try:
            with evaluation_precision(self.spec.eval_precision), torch.autocast(splits.test.x.device.type,
                                                                                enabled=False):
                self._evaluate(store, model_id, model, splits, base, train_wall, source)
        finally:
            if channels_last:
                to_contiguous(model)

    def _evaluate(self, store: ResultsStore, model_id: str, model: nn.Module, splits: Splits, base: dict[str, Any],
                  train_wall: float, source: tuple[str, dict[str, torch.Tensor]] | None) -> None:
        from robustprune.evaluation.checks import (
            check_input_gradients,
            check_monotone,
            check_pgd_vs_apgd,
            check_transfer,
        )
        from robustprune.evaluation.run import run_attacks
        from robustprune.evaluation.transfer import TRANSFER_PREFIX, apply_transfer
        from robustprune.metrics.vulnerability import latent_vulnerability
        from robustprune.utils import eps_to_str

        spec = self.spec
        test = splits.test
        n = min(spec.eval_n, len(test))
        x, y = in_layout(test.x[:n], self.channels_last), test.y[:n]
        # What the model lost, counted one way for every method (sparsity over every Conv2d / Linear weight, conv
        # filters and dense FLOPs gone against the unpruned architecture): on every row, and on the model's row
        sizes = size_metrics(model, splits.spec.shape)
        store.update_model(model_id, {k: sizes[k] for k in STRUCTURE_COLUMNS})
        vkey = self._vuln_key(splits) if spec.vulnerability else None
        v_hash, v_es = (vkey[1], eps_to_str(vkey[2])) if vkey else ("", "")
        need_white = vkey is not None and not store.has_vulnerability(model_id, "white", v_hash, v_es)
        run = run_attacks(
            model, x, y, spec.attacks, default_eps=splits.spec.eps_linf, batch_size=spec.eval_batch_size,
            seed=base["seed"], keep_adv=lambda ah, es: need_white and (ah, es) == (v_hash, v_es),
            skip=lambda ah, es: store.has_result(model_id, ah, es, n) and not (need_white and (ah, es) == (v_hash, v_es)),
        )
        rows = list(run.rows)
        if need_white and (v_hash, v_es) in run.adv:
            v = latent_vulnerability(model, x, run.adv[(v_hash, v_es)], batch_size=spec.eval_batch_size)
            store.put_vulnerability(model_id, "white", v_hash, v_es, network=v.network, layers=v.layers,
                                    features={k: t.tolist() for k, t in v.features.items()}, n_points=v.n)
        if source is not None and spec.transfer and not self._transfer_done(store, model_id, splits, vkey is not None):
            examples = self._transfer_examples(source[0], source[1], splits, base["architecture"], base["seed"],
                                               float(base.get("width") or self.spec.width))
            t_hash = next((it[4] for it in examples.items if vkey and it[0] == TRANSFER_PREFIX + vkey[0].name
                           and eps_to_str(it[2]) == v_es and config_hash({k: v for k, v in it[3].items()
                                                                         if k != "transfer_from"}) == v_hash), None)
            need_black = t_hash is not None and not store.has_vulnerability(model_id, "black", t_hash, v_es)
            trun = apply_transfer(model, x, y, examples, batch_size=spec.eval_batch_size, keep_adv=need_black,
                                  source_time=False)  # crafted once per base model, logged there
            rows += trun.rows[1:]
            if need_black and (t_hash, v_es) in trun.adv:
                v = latent_vulnerability(model, x, trun.adv[(t_hash, v_es)], batch_size=spec.eval_batch_size)
                store.put_vulnerability(model_id, "black", t_hash, v_es, network=v.network, layers=v.layers,
                                        features={k: t.tolist() for k, t in v.features.items()}, n_points=v.n)
        full = []
        for r in rows:
            if store.has_result(model_id, r["attack_hash"], r["eps_str"], r.get("n_eval", n)):
                continue  # already stored (a resumed cell, or a budget re-attacked only for its examples)
            row = {**base, **sizes, **r, "model_id": model_id, "study": spec.name, "code_version": code_version(),
                   "train_wall_time": train_wall, "eval_precision": spec.eval_precision}
            if isinstance(row.get("settings"), dict):
                row["settings"] = json.dumps(row["settings"], sort_keys=True)
            if isinstance(row.get("flags"), list):
                row["flags"] = json.dumps(row["flags"])
            row["config_hash"] = config_hash({"model": model_id, "attack": r["attack_hash"], "eps": r["eps_str"]})
            full.append(row)
        if len(full) > 0:
            store.put_results(full)
            self.outcome.rows_written += len(full)
            # sanity checks from the rows (cheap): eps monotone, white-box <= transfer, non-zero input gradients
            stored = store.results("model_id = ?", (model_id,))
            checks = check_monotone(stored) + check_transfer(stored) + check_pgd_vs_apgd(stored)
            checks.append(check_input_gradients(model, x[:256], y[:256], batch_size=spec.eval_batch_size))
            # The checks that rerun attacks are too costly for every model of a study: stored as not run, with why.
            why = "not run in a study (reruns attacks); run `robustprune evaluate` on the checkpoint"
            checks += [{"name": n, "ran": False, "passed": None, "detail": why}
                       for n in ("large_eps", "more_iterations", "min_norm_vs_budget")]
            store.put_checks(model_id, checks, evaluation_id="study", code_version=code_version())
        attacked = [r for r in full if r["attack"] != "clean"]
        summary = ", ".join(f"{r['attack']}@{r['eps_str']} {r['robust_acc']:.3f}" for r in attacked)
        rate = base.get("rate")
        self.log(f"  evaluated {base['method']} c={'learned' if rate is None else f'{rate:g}'}: "
                 f"clean {rows[0]['clean_acc']:.3f}" + (f", {summary}" if summary else " (robust rows already stored)")
                 + f", sparsity {sizes['achieved_sparsity']:.3f}, filters removed {sizes['filters_removed']:.3f}"
                 + ("" if sizes["flops_removed"] is None else f", FLOPs removed {sizes['flops_removed']:.3f}"))

