"""The study's remaining-time estimate (robustprune.study.eta): work counted in passes with known answers, rates
from probes replaced by finished phases, the running phase's elapsed time taken off, and the lines a study
prints (first estimate before any work, an update after every model)."""

from __future__ import annotations

import math

import pytest

from robustprune.methods import get_method
from robustprune.study.eta import StudyClock, evaluation_passes, objective_passes
from robustprune.train.cost import training_passes


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_training_passes_counts_steps_batches_and_validation():
    # 2 epochs of 1,000 images in batches of 128: ceil(2000 / 128) = 16 steps of 128 images x 2 passes (FGSM + the
    # step), plus 2 validations of PGD-10 + the clean pass on 1,000 points
    assert training_passes(epochs=2, n_train=1000, batch_size=128, per_image=2, val_size=1000,
                           val_steps=10) == 16 * 128 * 2 + 2 * 1000 * 11
    assert training_passes(epochs=0, n_train=1000, batch_size=128, per_image=2, val_size=1000, val_steps=10) == 0


def test_objective_passes():
    from robustprune.objectives import build_objective

    assert objective_passes(build_objective("natural")) == 1
    assert objective_passes(build_objective("fast-at", eps=0.1)) == 2
    assert objective_passes(build_objective("pgd-at", eps=0.1, steps=7)) == 8
    assert objective_passes(build_objective("trades", eps=0.1, steps=7)) == 9


def test_method_work_follows_rate_paths_phases_and_attack_steps():
    n, steps = 20000, math.ceil(20000 / 128) * 128
    val = 1000 * 11
    mag = get_method("magnitude-unstructured-global")
    # iterative: rates 4 and 16 are reached through 2, 4, 8, 16: four fine-tuning runs under the task's objective
    w = mag.work(mag.settings({}), [4, 16], epochs=1, n_train=n, objective_passes=2)
    assert [p.phase for p in w] == ["finetune"] and w[0].passes == 4 * (steps * 2 + val)
    one = mag.work(mag.settings({"schedule": "one-shot"}), [4, 16], epochs=1, n_train=n, objective_passes=2)
    assert one[0].passes == 2 * (steps * 2 + val)
    adm = get_method("admm-irregular")  # Ye2019: PGD-40 on MNIST-like data when pgd_steps is not set
    w = adm.work(adm.settings({"admm": {"epochs": 5}}), [4], epochs=1, n_train=n, dataset="fashion-mnist")
    # (its ADMM phase keeps the last epoch: validated on the clean pass only)
    assert {p.phase: p.passes for p in w} == pytest.approx({"admm": math.ceil(5 * n / 128) * 128 * 41 + 5 * 1000 / 3,
                                                            "retrain": steps * 41 + val})
    # ANP trains on the clean / adversarial pair (k + 2 passes, batch 64); BP on clean data; a learned rate runs once
    anp, bp = get_method("anp-bbd"), get_method("bp-bbd")
    s64 = math.ceil(n / 64) * 64
    assert anp.work(anp.settings({"pgd_steps": 2}), [None], epochs=1, n_train=n)[0].passes == s64 * 4 + val
    assert bp.work(bp.settings({}), [None], epochs=1, n_train=n)[0].passes == s64 * 1 + val


def test_evaluation_passes_known_answer():
    from robustprune.study.spec import load_study_spec

    spec = load_study_spec(None, {"attacks": [{"name": "pgd", "eps": [0.05, 0.1, 0.15], "steps": 20},
                                              {"name": "apgd", "eps": [0.1], "steps": 50, "n_target_classes": 3}]})
    pgd, apgd = spec.attacks
    n = 1000
    want_pgd = 3 * 20 * n * 0.8
    want_apgd = 50 * n * (0.8 + 0.65) / 2 + 3 * 50 * n * 0.65
    got = evaluation_passes([pgd, apgd], [], n=n, eps=0.1, transfer=False, vulnerability=False,
                            craft_transfer=False, attacked=0.8, standing=0.65)
    assert got == pytest.approx(n / 3 + want_pgd + want_apgd)
    # transfer rows: the forward passes of every transferred budget, and once per base model their crafting
    moved = evaluation_passes([pgd], [pgd], n=n, eps=0.1, transfer=True, vulnerability=False, craft_transfer=True,
                              attacked=0.8, standing=0.65)
    assert moved == pytest.approx(n / 3 + want_pgd + 3 * n / 3 + 3 * 20 * n)


def test_clock_uses_probes_then_finished_phases_and_takes_off_the_running_phase():
    t = Clock()
    logs: list[str] = []
    c = StudyClock(log=logs.append, clock=t)
    c.add("train|a", "base training", "train", 1000)
    c.add("eval|a", "evaluation", "eval", 500)
    c.add("train|b", "pruning", "train", 2000)
    assert c.remaining() is None and c.line() is None  # no rate yet: nothing said
    c.probe("train", 1.0, 100)   # 0.01 s per pass
    c.probe("eval", 1.0, 1000)   # 0.001 s per pass
    assert c.remaining() == pytest.approx({"base training": 10, "pruning": 20, "evaluation": 0.5})
    c.say(first=True)
    assert logs[-1].startswith("time estimate: 0.0 min elapsed, about 0.5 min left")
    assert c.first_total == pytest.approx(30.5)
    c.start("train|a")
    t.t = 4.0
    assert c.remaining()["base training"] == pytest.approx(6.0)
    t.t = 30.0  # the base model took 30 s, 3x the probe's rate: the other training phase is scaled the same way
    c.done("train|a")
    assert c.rate("train") == pytest.approx(0.03)
    assert c.remaining() == pytest.approx({"base training": 0, "pruning": 60, "evaluation": 0.5})
    c.drop("train|b")  # e.g. its base failed
    assert c.remaining()["pruning"] == 0
    c.say()
    assert logs[-1] == "time: 0.5 min elapsed, about 0.0 min left on this machine"
    with pytest.raises(ValueError):
        c.add("x", "no such group", "train", 1)


def test_schedule_respects_dependencies_and_finds_the_critical_path():
    """Known answers: two bases of 10 s; chains of 5 and 20 s on the first, 3 s on the second. One worker runs
    everything in a row (48 s); enough workers finish with the critical path (base 10 + chain 20 = 30 s); two
    workers: both bases at t=10, then the 20 s chain with the 5 s and 3 s chains beside it, so 30 s too."""
    from robustprune.study.eta import Phase, UnitWork, schedule
    from robustprune.study.unit import Unit

    def w(seed, method, seconds):
        return UnitWork(Unit("d", "a", seed, method), [Phase(f"{seed}{method}", "pruning", "train", seconds)])

    works = [w(0, None, 10), w(1, None, 10), w(0, "m1", 5), w(0, "m2", 20), w(1, "m1", 3)]
    one = schedule(works, {"train": 1.0}, 1)
    assert one.wall == one.serial == 48 and one.critical == 30
    assert [u.method for u in one.critical_units] == [None, "m2"]
    assert schedule(works, {"train": 1.0}, 8).wall == 30
    assert schedule(works, {"train": 1.0}, 2).wall == 30
    # a chain never starts before its base: one 100 s base, a 1 s chain, many workers -> 101 s
    assert schedule([w(0, None, 100), w(0, "m", 1)], {"train": 1.0}, 4).wall == 101


def test_plan_and_running_estimate_count_the_same_phases(tmp_path):
    """`--plan` and the running study's estimate use one cost model: the same phases with the same passes."""
    from robustprune.study import load_study_spec
    from robustprune.study.eta import StudyClock, study_work
    from robustprune.study.runner import StudyRunner
    from robustprune.study.store import ResultsStore

    spec = load_study_spec(None, {"methods": ["magnitude-unstructured-global", "admm-irregular"],
                                  "compression": [1, 2, 4], "seeds": [0, 1]})
    runner = StudyRunner(spec, tmp_path, log=lambda m: None)
    runner._sizes = {"fashion-mnist": (55000, 5000, 1000)}
    runner.clock = StudyClock(log=lambda m: None)
    with ResultsStore(tmp_path / "results.sqlite") as store:
        runner._plan_time(store)
    planned = {p.key: p.passes for u in study_work(runner, runner._sizes) for p in u.phases}
    assert planned == {k: p.passes for k, p in runner.clock.phases.items()}
    assert len(planned) == 2 * (2 + 2 * 2 * 2)  # per seed: base train + eval, 2 methods x 2 rates x (train + eval)


def test_plan_refuses_what_the_run_would_refuse_before_any_work():
    """A Flying Bird budget that reaches no topology update is refused by `--plan` as by the run."""
    from robustprune.errors import ConfigError
    from robustprune.study import load_study_spec
    from robustprune.study.plan import plan_lines

    spec = load_study_spec(None, {"methods": ["flyingbird"], "train_limit": 3000, "prune_epochs": 2,
                                  "compression": [2]})
    with pytest.raises(ConfigError, match="reach no topology update.*update_every"):
        plan_lines(spec)
    ok = load_study_spec(None, {"methods": ["flyingbird"], "train_limit": 3000, "prune_epochs": 2,
                                "compression": [2], "method_settings": {"flyingbird": {"update_every": 10}}})
    assert any("flyingbird" in ln for ln in plan_lines(ok))
