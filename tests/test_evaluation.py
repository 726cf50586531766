"""robustprune.evaluation: rows of budget and minimal-norm attacks, security curves, transfer attacks, sanity
checks that flag bad evaluations, latent vulnerability (Madaan2020 Eq. 1-2), the results store's checks and the
`evaluate` command's JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import TinyConvNet, blobs
from robustprune.attacks import pgd_linf
from robustprune.errors import ConfigError
from robustprune.evaluation import (
    AttackConfig,
    MinNormResult,
    check_input_gradients,
    check_more_iterations,
    check_transfer,
    evaluate_attacks,
    evaluate_model,
    failed,
    register_attack_info,
    robust_accuracy_from_norms,
    robust_mask_from_norms,
    run_attacks,
    run_transfer,
    sanity_checks,
    security_curve,
    transfer_attack,
    unregister_attack_info,
)
from robustprune.evaluation.run import ROW_KEYS
from robustprune.metrics import latent_layers, latent_vulnerability
from robustprune.utils import make_generator


# ------------------------------------------------------------------------------------------------ fixtures
def _train(model: nn.Module, x, y, epochs: int = 60, lr: float = 0.05) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, len(x), 128):
            loss = nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data():
    x, y = blobs(n=400, seed=0)
    return x, y


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    x, y = data
    return _train(TinyConvNet(), x, y, epochs=15, lr=0.01)


@pytest.fixture(scope="module")
def trained_other(data):
    torch.manual_seed(1)
    x, y = data
    return _train(TinyConvNet(), x, y, epochs=15, lr=0.01)


@pytest.fixture
def fake_attacks():
    """Register test doubles; unregister afterwards."""
    names = []

    def add(name, fn, **kw):
        register_attack_info(name, fn, **kw)
        names.append(name)

    yield add
    for n in names:
        unregister_attack_info(n)


class LinearNet(nn.Sequential):
    """Two-class linear classifier on flattened 1x4x4 images: the minimal L2 adversarial is closed-form."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(nn.Flatten(), nn.Linear(16, 2))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self[1].weight.copy_(torch.randn(2, 16, generator=g))
            self[1].bias.copy_(torch.randn(2, generator=g) * 0.5)


def exact_l2_distance(model: LinearNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w, b = model[1].weight, model[1].bias
    z = x.flatten(1) @ w.T + b
    other = 1 - y
    direction = w[other] - w[y]
    margin = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, other[:, None]).squeeze(1)
    return margin / direction.norm(dim=1), direction


def fake_min_l2(model, x, y, *, cap: float = 1.5, steps: int = 10, generator=None):
    """Exact minimal-L2 attack on LinearNet (a hair past the boundary); inf beyond ``cap``."""
    fake_min_l2.calls += 1
    with torch.no_grad():
        d, direction = exact_l2_distance(model, x, y)
        unit = direction / direction.norm(dim=1, keepdim=True)
        step = (d + 1e-4).clamp(min=0)
        x_adv = x + (step[:, None] * unit).view_as(x)
        found = d <= cap
        x_adv = torch.where(found.view(-1, 1, 1, 1), x_adv, x)
        norms = torch.where(found, (x_adv - x).flatten(1).norm(dim=1), torch.full_like(d, math.inf))
        norms = torch.where(d < 0, torch.zeros_like(norms), norms)
    return MinNormResult(x_adv, norms)


fake_min_l2.calls = 0


# ------------------------------------------------------------------------------------------------ rows
def test_budget_rows_and_study_reexport(trained, data):
    x, y = data
    specs = [AttackConfig.build("pgd", ["0.05", "0.1"], steps=5), AttackConfig.build("fgsm", [0.1])]
    rows = evaluate_attacks(trained, x[:60], y[:60], specs, default_eps=0.1, batch_size=25)
    assert [r["attack"] for r in rows] == ["clean", "pgd", "pgd", "fgsm"]
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    assert rows[1]["eps_str"] == "0.05" and rows[1]["norm"] == "Linf" and rows[1]["attack_config"]["steps"] == 5
    assert rows[0]["clean_acc"] >= rows[1]["robust_acc"] >= rows[2]["robust_acc"]
    # the study's old entry point and AttackSpec keep working, with the same numbers
    from robustprune.study import AttackSpec
    from robustprune.study import evaluate_attacks as study_eval

    old = study_eval(trained, x[:60], y[:60], [AttackSpec(name="pgd", eps=(0.05, 0.1), steps=5)], default_eps=0.1,
                     batch_size=25)
    assert [r["robust_acc"] for r in old[1:]] == [r["robust_acc"] for r in rows[1:3]]
    skipped = study_eval(trained, x[:60], y[:60], [AttackSpec(name="pgd", eps=(0.05, 0.1), steps=5)],
                         default_eps=0.1, batch_size=25, skip=lambda h, e: e == "0.05")
    assert [r["eps_str"] for r in skipped] == ["0", "0.1"]


def test_attack_config_validation():
    cfg = AttackConfig.build("pgd", ["8/255"])
    assert cfg.eps == (8 / 255,) and cfg.options["steps"] == 20  # evaluation PGD >= 20 steps by default
    assert "steps" not in AttackConfig.build("fgsm", [0.1]).options
    with pytest.raises(ConfigError, match="no setting 'stepz'"):
        AttackConfig.build("pgd", [0.1], stepz=3)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        AttackConfig.build("pgd", [2.0])
    with pytest.raises(ConfigError, match="eps"):
        AttackConfig.build("pgd", ["abc"])


def test_min_norm_attack_runs_once_rows_for_every_eps(fake_attacks):
    fake_attacks("fake-l2", fake_min_l2, norm="L2", kind="min-norm")
    torch.manual_seed(0)
    model = LinearNet()
    x = torch.rand(64, 1, 4, 4)
    y = (model(x).argmax(1) + (torch.rand(64) < 0.2).long()) % 2  # ~20 % misclassified when clean
    eps = [0.1, 0.3, 0.6, 1.0, 2.0]
    fake_min_l2.calls = 0
    run = run_attacks(model, x, y, [AttackConfig.build("fake-l2", eps, cap=1.5)], default_eps=0.1, batch_size=100)
    assert fake_min_l2.calls == 1  # one run for every budget
    rows = run.rows[1:]
    assert [r["eps"] for r in rows] == eps and {r["norm"] for r in rows} == {"L2"}
    assert len({r["attack_hash"] for r in rows}) == 1
    d, _ = exact_l2_distance(model, x, y)
    for r in rows:
        expect = float(((d > 0) & ((d + 1e-4 > r["eps"]) | (d > 1.5))).double().mean())
        assert r["robust_acc"] == pytest.approx(expect, abs=1e-9)
    (curve,) = run.curves
    assert curve["norm"] == "L2" and set(eps) <= set(curve["eps"])
    acc = curve["robust_acc"]
    assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))
    assert acc[0] == pytest.approx(run.clean_acc)
    assert curve["n_found"] == int(((d > 0) & (d <= 1.5)).sum()) + int((d <= 0).sum())
    # the found points are verified: misclassified, with the reported norm
    checks = sanity_checks(model, x, y, run.rows, run=run, large_eps=False, more_iterations=False,
                           gradients=False)
    (mn,) = [c for c in checks if c["name"].startswith("min_norm_valid")]
    assert mn["passed"], mn


def test_min_norm_check_flags_lying_norms(fake_attacks):
    def liar(model, x, y, *, generator=None):
        res = fake_min_l2(model, x, y)
        return MinNormResult(res.x_adv, torch.where(torch.isfinite(res.norms), res.norms * 3, res.norms))

    fake_attacks("liar", liar, norm="L2", kind="min-norm")
    torch.manual_seed(0)
    model = LinearNet()
    x = torch.rand(64, 1, 4, 4)
    y = model(x).argmax(1)
    run = run_attacks(model, x, y, [AttackConfig.build("liar", [0.5])], default_eps=0.1)
    checks = sanity_checks(model, x, y, run.rows, run=run, large_eps=False, more_iterations=False, gradients=False)
    assert [c["name"] for c in failed(checks)] == ["min_norm_valid:liar"]


def test_robust_accuracy_from_norms_and_security_curve():
    norms = torch.tensor([0.0, 0.5, math.inf, 1.0])
    assert robust_accuracy_from_norms(norms, 0.5) == 0.5  # norm == eps is inside the ball: not robust
    assert robust_accuracy_from_norms(norms, 0.0) == 0.75
    assert robust_accuracy_from_norms(norms, 10.0) == 0.25
    assert robust_mask_from_norms(norms, 0.75).tolist() == [False, False, True, True]
    g = torch.Generator().manual_seed(0)
    many = torch.rand(200, generator=g) * 3
    many[:20] = math.inf
    curve = security_curve(many, [2.0, 0.0, 1.0, 0.5])
    assert curve["eps"] == [0.0, 0.5, 1.0, 2.0]
    assert all(a >= b for a, b in zip(curve["robust_acc"], curve["robust_acc"][1:], strict=False))
    assert curve["robust_acc"][1] == pytest.approx(robust_accuracy_from_norms(many, 0.5))
    auto = security_curve(many)
    assert len(auto["eps"]) == 51 and auto["robust_acc"][-1] == pytest.approx(0.1) and auto["n_found"] == 180
    assert security_curve([math.inf] * 3)["median_norm"] is None
    json.dumps(auto)  # JSON-able


# ------------------------------------------------------------------------------------------------ transfer
def test_transfer_from_itself_equals_white_box(trained, trained_other, data):
    x, y = data
    xs, ys = x[:80], y[:80]
    specs = [AttackConfig.build("pgd", [0.1, 0.2], steps=5)]
    white = run_attacks(trained, xs, ys, specs, default_eps=0.1, batch_size=30, seed=3)
    self_t = run_transfer(trained, trained, xs, ys, specs, default_eps=0.1, batch_size=30, seed=3)
    assert [r["robust_acc"] for r in white.rows] == [r["robust_acc"] for r in self_t.rows]
    assert self_t.rows[1]["attack"] == "transfer-pgd" and self_t.rows[1]["attack_config"]["transfer_from"]
    kw = white.kwargs[(white.rows[2]["attack_hash"], "0.2")]
    acc = transfer_attack(trained, trained, xs, ys, pgd_linf, batch_size=30, generator=make_generator(3), **kw)
    assert acc == white.rows[2]["robust_acc"]
    other = transfer_attack(trained_other, trained, xs, ys, "pgd", batch_size=30, generator=make_generator(3), **kw)
    assert other >= white.rows[2]["robust_acc"]  # a transfer attack is weaker than the white-box one here


def test_keep_adv_predicate_keeps_only_the_named_budgets_and_leaves_rows_alone(trained, data):
    """keep_adv as a predicate: adversarial examples (clean errors attacked too) only where it says so, the
    same rows and the same examples there as keep_adv=True, none elsewhere; the same for crafted transfers."""
    from robustprune.evaluation import apply_transfer, craft_transfer

    x, y = data
    xs, ys = x[:80], y[:80]
    specs = [AttackConfig.build("pgd", [0.1, 0.2], steps=5)]
    full = run_attacks(trained, xs, ys, specs, default_eps=0.1, batch_size=30, seed=3, keep_adv=True)
    one = run_attacks(trained, xs, ys, specs, default_eps=0.1, batch_size=30, seed=3,
                      keep_adv=lambda ah, es: es == "0.2")
    assert [r["robust_acc"] for r in one.rows] == [r["robust_acc"] for r in full.rows]
    assert [k[1] for k in one.adv] == ["0.2"] and len(full.adv) == 2
    key = next(k for k in full.adv if k[1] == "0.2")
    assert torch.equal(one.adv[key], full.adv[key])
    ex = craft_transfer(trained, xs, ys, specs, default_eps=0.1, batch_size=30, seed=3,
                        keep_adv=lambda ah, es: es == "0.1")
    (i01, i02) = [i for i, it in enumerate(ex.items)]
    assert ex.items[i02][6] is ex.items[i02][5]  # not kept: x_keep is the transfer example itself
    assert not torch.equal(ex.items[i01][6], ex.items[i01][5]) or bool(full.clean_mask.all())
    assert apply_transfer(trained, xs, ys, ex).rows[1]["robust_acc"] == full.rows[1]["robust_acc"]


def test_check_transfer_flags_white_box_weaker_than_transfer():
    rows = [{"attack": "clean", "eps": 0.0, "eps_str": "0", "robust_acc": 0.9, "n_eval": 100, "attack_config": {}},
            {"attack": "pgd", "eps": 0.1, "eps_str": "0.1", "robust_acc": 0.6, "n_eval": 100,
             "attack_config": {"name": "pgd"}},
            {"attack": "transfer-pgd", "eps": 0.1, "eps_str": "0.1", "robust_acc": 0.4, "n_eval": 100,
             "attack_config": {"name": "pgd", "transfer_from": "src"}}]
    (c,) = check_transfer(rows)
    assert c["name"] == "whitebox_vs_transfer:pgd@0.1" and c["passed"] is False
    rows[2]["robust_acc"] = 0.7
    assert check_transfer(rows)[0]["passed"] is True


# ------------------------------------------------------------------------------------------------ sanity checks
def test_sanity_checks_pass_on_a_good_evaluation(trained, data):
    x, y = data
    report = evaluate_model(trained, x[:100], y[:100], [AttackConfig.build("pgd", [0.05, 0.1, 0.2], steps=20)],
                            default_eps=0.1, check_subset=60)
    names = {c["name"].split(":")[0] for c in report.checks}
    assert {"eps_monotone", "large_eps", "more_iterations", "converged", "input_gradients"} <= names
    assert not report.failed_checks, report.failed_checks
    assert all(set(c) == {"name", "passed", "detail", "value", "threshold"} for c in report.checks)


def test_sanity_checks_flag_accuracy_rising_with_eps(trained, data, fake_attacks):
    def rising(model, x, y, *, eps, generator=None):  # strong at small eps, does nothing at large eps
        return pgd_linf(model, x, y, eps=eps, steps=5, generator=generator) if eps < 0.15 else x.clone()

    fake_attacks("rising", rising, norm="Linf", kind="budget")
    x, y = data
    with pytest.warns(UserWarning, match="eps_monotone:rising"):
        report = evaluate_model(trained, x[:60], y[:60], [AttackConfig.build("rising", [0.1, 0.3])],
                                default_eps=0.1, check_subset=30)
    assert report.rows[1]["robust_acc"] < report.rows[2]["robust_acc"]
    assert [c["name"] for c in report.failed_checks] == ["eps_monotone:rising"]


def test_sanity_checks_flag_attack_weaker_with_more_steps(trained, data, fake_attacks):
    def lazy(model, x, y, *, eps, steps=10, restarts=1, generator=None):
        return pgd_linf(model, x, y, eps=eps, steps=5, generator=generator) if steps <= 20 else x.clone()

    fake_attacks("lazy", lazy, norm="Linf", kind="budget")
    x, y = data
    run = run_attacks(trained, x[:60], y[:60], [AttackConfig.build("lazy", [0.2], steps=20)], default_eps=0.1)
    checks = check_more_iterations(trained, x[:60], y[:60], run.rows, run=run, subset=60)
    assert [c["name"] for c in failed(checks)] == ["more_iterations:lazy@0.2"]


class RoundInput(nn.Module):
    def forward(self, x):
        return torch.round(x * 4) / 4


def test_sanity_checks_flag_gradient_masking(trained, data):
    x, y = data
    masked = nn.Sequential(RoundInput(), trained).eval()
    c = check_input_gradients(masked, x[:50], y[:50])
    assert c["passed"] is False and c["value"] == 1.0
    assert check_input_gradients(trained, x[:50], y[:50])["passed"] is True
    report = evaluate_model(masked, x[:60], y[:60], [AttackConfig.build("pgd", [0.05, 0.1], steps=5)],
                            default_eps=0.1, check_subset=30, warn=False)
    assert "input_gradients" in {c["name"] for c in report.failed_checks}


# ------------------------------------------------------------------------------------------------ vulnerability
def test_vulnerability_closed_form_on_a_linear_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Linear(5, 3))
    x, xa = torch.rand(40, 1, 4, 4), torch.rand(40, 1, 4, 4)
    v = latent_vulnerability(model, x, xa, batch_size=16)
    assert list(v.layers) == ["1"]  # the logits layer is not a latent layer
    w = model[1].weight.detach().double()
    expect = ((x - xa).flatten(1).double() @ w.T).abs().mean(0)
    assert torch.allclose(v.features["1"], expect, atol=1e-6)
    assert v.layers["1"] == pytest.approx(float(expect.mean()), abs=1e-6)
    assert v.network == pytest.approx(v.layers["1"])


def test_vulnerability_default_layers_are_post_activation_and_network_is_layer_mean():
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    layers = latent_layers(model, torch.rand(2, 1, 6, 6))
    assert [(lay.name, lay.source, lay.post_activation) for lay in layers] == [
        ("1", "2", True), ("3", "4", True), ("6", "7", True)]
    x = torch.rand(30, 1, 6, 6)
    xa = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    v = latent_vulnerability(model, x, xa)
    assert v.features["1"].shape == (8,) and v.features["6"].shape == (16,)
    assert v.network == pytest.approx(sum(v.layers.values()) / 3)
    # features by hand for the first conv: post-ReLU, mean over samples and positions per channel
    with torch.no_grad():
        f = lambda t: torch.relu(model[1](model[0](t)))  # noqa: E731
        expect = (f(x) - f(xa)).abs().mean((0, 2, 3)).double()
    assert torch.allclose(v.features["1"], expect, atol=1e-6)
    zero = latent_vulnerability(model, x, x.clone())
    assert zero.network == 0.0 and all(float(t.abs().max()) == 0.0 for t in zero.features.values())


def test_pruned_unit_has_zero_vulnerability():
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    with torch.no_grad():
        model[1].weight[3] = 0.0          # pruned filter (bias kept: still a constant)
        model[6].weight[5] = 0.0          # pruned unit of the hidden linear layer
        model[6].bias[5] = 0.0
    x = torch.rand(30, 1, 6, 6)
    xa = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    v = latent_vulnerability(model, x, xa)
    assert v.features["1"][3].item() == 0.0 and v.features["6"][5].item() == 0.0
    assert float(v.features["1"].sum()) > 0


@pytest.mark.parametrize("name", ["lenet5-caffe", "cnn5", "vgg11", "resnet18", "preact-resnet8", "wrn-28-4"])
def test_vulnerability_works_for_registered_models(name):
    from robustprune.models import create_model

    torch.manual_seed(0)
    width = 1.0 if name in ("lenet5-caffe", "cnn5", "preact-resnet8") else 0.125
    model = create_model(name, width=width).eval()
    x = torch.rand(3, 1, 28, 28)
    v = latent_vulnerability(model, x, (x + 0.05).clamp(0, 1))
    assert len(v.layers) >= 2 and math.isfinite(v.network) and v.network > 0
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    assert all(dict(model.named_modules())[k] is not last for k in v.layers)


def test_vulnerability_in_evaluate_model(trained, trained_other, data):
    x, y = data
    report = evaluate_model(trained, x[:40], y[:40], [AttackConfig.build("fgsm", [0.1])], default_eps=0.1,
                            transfer_from=trained_other, transfer_source="other", vulnerability=True, checks=False)
    assert [v["threat"] for v in report.vulnerability] == ["white-box", "transfer"]
    assert [r["attack"] for r in report.rows] == ["clean", "fgsm", "transfer-fgsm"]
    assert report.vulnerability[0]["network"] > 0
    doc = report.to_json(model="m")
    json.dumps(doc)
    assert [e["threat"] for e in doc["robust"]] == ["white-box", "transfer"]
    assert doc["robust"][1]["source"] == "other" and "transfer_from" not in doc["robust"][1]["settings"]


# ------------------------------------------------------------------------------------------------ store
def test_store_checks_table(tmp_path):
    from robustprune.study import ResultsStore

    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.checks() == []
        store.put_checks("m1", [{"name": "large_eps", "passed": False, "detail": "d", "value": 0.3,
                                 "threshold": 0.05}, {"name": "input_gradients", "passed": True, "detail": "ok"}],
                         evaluation_id="e1")
        store.put_checks("m1", [{"name": "large_eps", "passed": True, "detail": "again"}], evaluation_id="e1")
        got = store.checks("m1")
    assert [(c["name"], c["passed"]) for c in got] == [("input_gradients", True), ("large_eps", True)]


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustprune", *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "ROBUSTPRUNE_DEVICE": "cpu", "HOME": "/tmp",
                               "PYTHONPATH": ":".join(sys.path), "OMP_NUM_THREADS": "2"})


@pytest.mark.usefixtures("fmnist_available")
def test_cli_evaluate_json(tmp_path):
    from robustprune.checkpoint import save_checkpoint
    from robustprune.data import load_splits
    from robustprune.models import model_for_dataset

    splits = load_splits("fashion-mnist", val_size=0, train_limit=1500, test_limit=10)
    s = splits.spec
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = _train(model_for_dataset("lenet-mnist-w", s), splits.train.x, splits.train.y, epochs=2, lr=3e-3)
        path = tmp_path / f"m{seed}.safetensors"
        save_checkpoint(path, model, meta={"architecture": "lenet-mnist-w", "dataset": s.name, "num_classes": 10,
                                           "input_shape": list(s.shape), "width": 1.0, "mean": list(s.mean),
                                           "std": list(s.std), "config": {"seed": seed}})
        ckpts.append(path)
    out, db = tmp_path / "e.json", tmp_path / "r.sqlite"
    proc = _cli("evaluate", str(ckpts[0]), "--attack", "pgd:eps=8/255;0.1,steps=3", "--attack", "fgsm:eps=0.1",
                "--n", "100", "--json", str(out), "--db", str(db), "--transfer-from", str(ckpts[1]),
                "--vulnerability", "--check-n", "30")
    assert proc.returncode == 0, proc.stderr
    assert "sanity checks:" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["n_points"] == 100 and 0 < doc["clean_acc"] <= 1
    white = [e for e in doc["robust"] if e["threat"] == "white-box"]
    assert [(e["attack"], e["eps_str"]) for e in white] == [("pgd", "8/255"), ("pgd", "0.1"), ("fgsm", "0.1")]
    assert white[0]["eps"] == pytest.approx(8 / 255) and white[0]["settings"]["steps"] == 3
    assert all(e["n_points"] == 100 and e["norm"] == "Linf" for e in white)
    assert [e["attack"] for e in doc["robust"] if e["threat"] == "transfer"] == ["transfer-pgd"] * 2 + [
        "transfer-fgsm"]
    names = {c["name"] for c in doc["checks"]}
    assert {"large_eps", "input_gradients", "eps_monotone:pgd", "whitebox_vs_transfer:pgd@0.1"} <= names
    assert doc["checks_passed"] == all(c["passed"] for c in doc["checks"])
    assert len(doc["vulnerability"]) == 6 and set(doc["vulnerability"][0]["layers"]) == {
        "features.0", "features.3", "classifier.0"}
    from robustprune.study import ResultsStore

    with ResultsStore(db) as store:
        assert len(store.results()) == 7 and len(store.checks()) == len(doc["checks"])
    bad = _cli("evaluate", str(ckpts[0]), "--attack", "pgd:eps=0.1,stepz=3")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "stepz" in bad.stderr
