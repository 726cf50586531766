"""Issue 29 item 1 and 2, issue 30 item 1 (methods side): a structured rate counts filters (as the Adversarial Pruning
Benchmark and Twin-Rep's reference do), the weight fraction is stored beside it; each leader trains as its reference
does (HYDRA's trainable set, Flying Bird's density rule, Flying Bird+'s validation attack); a method whose mechanism
did not act is flagged ``mechanism-did-not-act``, or refused before any work where the budget makes it certain."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import robustprune
from conftest import TinyConvNet, blobs, cli, run_main, write_learnable_mnist
from robustprune.errors import ConfigError
from robustprune.methods import get_method
from robustprune.methods.interface import FLAG_TEXT, PruneResult, mechanism, result_flags
from robustprune.sparsity import MaskSet, conv_filters, prunable_layers

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------- filters of unequal size
@pytest.fixture(scope="module")
def lenet_base(tmp_path_factory):
    """A LeNet-5-Caffe (conv1: 20 filters of 25 weights, conv2: 50 filters of 500) trained one epoch on MNIST-format
    data: filters of very unequal size."""
    data = write_learnable_mnist(tmp_path_factory.mktemp("mnist"), n_train=400, n_test=40)
    out = tmp_path_factory.mktemp("base") / "base.safetensors"
    assert run_main("train", "--dataset", "mnist", "--data-dir", str(data), "--val-size", "100", "--objective",
                    "natural", "--epochs", "1", "--out", str(out), "-q") == 0
    assert out.is_file()
    return out, data


def _filters(path) -> tuple[int, int, float, dict]:
    from robustprune.checkpoint import load_checkpoint

    model, meta, _masks = load_checkpoint(path)
    total, zero = conv_filters(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    conv_w = sum(m.weight.numel() for m in convs)
    conv_zero = sum(int((m.weight == 0).sum()) for m in convs)
    return total, zero, conv_zero / conv_w, meta


def test_sparsity_half_with_a_filter_method_removes_half_of_the_filters_and_stores_the_weight_fraction(
        lenet_base, tmp_path, monkeypatch, capsys):
    base, data = lenet_base
    code, out, err = cli(monkeypatch, capsys, "prune", str(base), "--method", "magnitude-filter-global",
                         "--sparsity", "0.5", "--epochs", "0", "--data-dir", str(data), "--out", str(tmp_path))
    assert code == 0, err
    ckpt = next(tmp_path.glob("*magnitude-filter-global-c2.safetensors"))
    total, zero, conv_weights, meta = _filters(ckpt)
    assert total == 70 and zero == 35  # half of the 20 + 50 filters, whatever their sizes
    # the weight fraction is stored beside it (and differs: the filters are not of one size)
    assert meta["achieved_sparsity"] == pytest.approx(1 - 1 / meta["achieved_compression"])
    assert 0 < meta["achieved_sparsity"] < 0.5
    assert meta["prune_result"]["settings"]["budget"] == "groups"
    assert abs(conv_weights - 0.5) > 0.05

    # the weight-counted budget stays available under its own name: half of the conv weights, in whole filters
    w_out = tmp_path / "weights"
    code, out, err = cli(monkeypatch, capsys, "prune", str(base), "--method", "magnitude-filter-global",
                         "--sparsity", "0.5", "--epochs", "0", "--set", "budget=weights", "--data-dir", str(data),
                         "--out", str(w_out))
    assert code == 0, err
    total, zero, conv_weights, _meta = _filters(next(w_out.glob("*.safetensors")))
    assert abs(conv_weights - 0.5) <= 500 / 25_500 + 1e-9  # within one conv2 filter of half of the conv weights
    assert zero != 35


@pytest.mark.usefixtures("fmnist_available")
def test_a_study_row_stores_both_fractions_and_the_report_says_what_the_target_counts(tmp_path):
    from robustprune.study import ResultsStore, load_study_spec, run_study

    spec = load_study_spec(None, {
        "name": "counting", "architectures": ["lenet5-caffe"], "train_limit": 600, "val_size": 200, "eval_n": 50,
        "base_train": {"epochs": 1, "batch_size": 100, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0,
                       "progress": False, "val_size": 100},
        "methods": ["magnitude-filter-global"], "sparsity": [0, 0.5], "finetune_limit": 200,
        "method_settings": {"magnitude-filter-global": {"schedule": "one-shot",
                                                        "finetune": {"epochs": 0.5, "batch_size": 100}}},
        "attacks": [{"name": "pgd", "eps": [0.1], "steps": 2}], "transfer": False, "vulnerability": False})
    outcome = run_study(spec, tmp_path, log=lambda _m: None, progress=False)
    assert outcome.failures == []
    with ResultsStore(tmp_path / "results.sqlite", readonly=True) as store:
        rows = [r for r in store.results() if r["method"] == "magnitude-filter-global"]
    assert rows and all(r["filters_removed"] == pytest.approx(0.5) for r in rows)
    assert all(r["achieved_sparsity"] is not None and r["achieved_sparsity"] < 0.45 for r in rows)
    md = (tmp_path / "report.md").read_text()
    assert "target counts" in md and "filters removed (% of conv filters)" in md
    assert "achieved sparsity (% of Conv2d + Linear weights)" in md
    lines = [x for x in md.splitlines() if "magnitude-filter-global" in x]
    assert any("| 50 (filters) |" in x for x in lines)  # the headline table: 50 % of the filters
    assert any("| 50 | filters |" in x for x in lines)  # the models table: target sparsity, what it counts


# ---------------------------------------------------------------------------------------- the leaderboard's rule
def test_leaderboard_matches_a_structured_row_only_when_it_counts_filters(tmp_path):
    from test_apb_presets import _md_table, _rows

    from robustprune.study import ResultsStore
    from robustprune.study.report import write_report

    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.set_meta("spec", {"name": "toy-apb", "leaderboard": "apb"})
        _rows(store, "base", "unpruned", "none", 1.0, 0.84, 0.47)
        _rows(store, "a10", "admm-filter", "filter", 10.0, 0.65, 0.33, parent="base")
    import sqlite3

    db = sqlite3.connect(tmp_path / "results.sqlite")  # the same cell run with budget: weights
    with db:
        for table in ("models", "results"):
            db.execute(f"UPDATE {table} SET settings = ? WHERE model_id = 'a10'", (json.dumps({"budget": "weights"}),))
    db.close()
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    table = _md_table(md, "## Leaderboard")
    head = table[0]
    a = next(dict(zip(head, r)) for r in table[1:] if r[2].startswith("admm-filter"))
    assert a["target counts"] == "weights"
    assert a["APB published: clean (%)"] == ""  # 90 % of weights is not APB's 90 % of filters
    assert "only when both count the same thing" in md and "Not matched because the target counts" in md


def test_leaderboard_rows_counting_filters_are_matched(tmp_path):
    from test_apb_presets import _md_table, _rows

    from robustprune.study import ResultsStore
    from robustprune.study.report import write_report

    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.set_meta("spec", {"name": "toy-apb", "leaderboard": "apb"})
        _rows(store, "base", "unpruned", "none", 1.0, 0.84, 0.47)
        _rows(store, "a10", "admm-filter", "filter", 10.0, 0.65, 0.33, parent="base")
    write_report(tmp_path)
    table = _md_table((tmp_path / "report.md").read_text(), "## Leaderboard")
    a = next(dict(zip(table[0], r)) for r in table[1:] if r[2].startswith("admm-filter"))
    assert a["target counts"] == "filters" and a["APB published: clean (%)"] == "70.53"


# ---------------------------------------------------------------------------------------- each leader as its reference
def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_hydra_trains_batchnorm_affine_terms_with_the_scores_never_the_weights(freeze_bn):
    x, y = blobs(128)
    net = _bn_net()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    res = robustprune.prune(net, "hydra", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1, freeze_bn=freeze_bn,
                            prune={"batch_size": 32, "epochs": 1, "select": "last"}, finetune={"epochs": 0})
    assert get_method("hydra").Settings().freeze_bn is False  # the reference's default (--freeze-bn off)
    trainable = set(res.convergence["score_phase_trainable"])
    bn_affine = {"1.weight", "1.bias", "4.weight", "4.bias"}
    assert {n for n in trainable if not n.endswith("popup_scores")} == (set() if freeze_bn else bn_affine)
    after = net.state_dict()
    for name in ("0.weight", "3.weight", "7.weight"):  # weights: only masked, never trained
        kept = res.masks[name.rsplit(".", 1)[0]]
        torch.testing.assert_close(after[name][kept], before[name][kept], rtol=0, atol=0)
    for name in ("0.bias", "3.bias", "7.bias"):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    moved = any(not torch.equal(after[n], before[n]) for n in bn_affine)
    assert moved is (not freeze_bn)


def test_flyingbird_defaults_to_igq_densities_and_erk_is_a_setting():
    from robustprune.methods.sparse_training import layer_counts

    s = get_method("flyingbird").Settings()
    assert s.layer_density == "igq"
    field = get_method("flyingbird").Settings.model_fields["layer_density"]
    assert "main_adv.py L64" in field.json_schema_extra["source"]
    x, y = blobs(200)
    for density in ("igq", "erk"):
        torch.manual_seed(0)
        net = TinyConvNet()
        kw = {} if density == "igq" else {"layer_density": "erk"}
        res = robustprune.prune(net, "flyingbird", rate=4, data=(x, y), eps=0.1, epochs=1, update_every=1,
                                update_every_late=1, pgd_steps=1, train={"batch_size": 50}, **kw)
        shapes = {n: tuple(m.weight.shape) for n, m in prunable_layers(net, "unstructured").items()}
        total = sum(math.prod(v) for v in shapes.values())
        target = res.convergence["target_kept"]
        assert res.convergence["layer_counts_initial"] == layer_counts(shapes, target, density)
        assert target == round(total / 4)
    assert layer_counts(shapes, target, "igq") != layer_counts(shapes, target, "erk")  # the rule is observable


def test_flyingbird_plus_validates_with_pgd20_at_step_2_over_255(monkeypatch):
    import robustprune.methods.sparse_training as st

    calls = []
    real = st.robust_loss_accuracy

    def spy(model, split, **kw):
        calls.append(kw)
        return real(model, split, **{**kw, "steps": 1})  # measured the same way, cheaper

    monkeypatch.setattr(st, "robust_loss_accuracy", spy)
    x, y = blobs(200)
    torch.manual_seed(0)
    eps = 8 / 255
    res = robustprune.prune(TinyConvNet(), "flyingbird-plus", rate=4, data=(x, y), val=blobs(60, seed=1), eps=eps,
                            epochs=2, update_every=1, update_every_late=1, pgd_steps=1, train={"batch_size": 50})
    assert len(calls) == 2  # once per epoch
    assert all(c["steps"] == 20 and c["alpha"] == pytest.approx(2 / 255) and c["eps"] == pytest.approx(eps)
               for c in calls)
    assert res.convergence["val_attack"]["steps"] == 20
    assert res.convergence["val_attack"]["step_size"] == pytest.approx(2 / 255)


# ---------------------------------------------------------------------------------------- mechanisms
def test_flyingbird_below_one_topology_update_is_refused_before_any_work(monkeypatch):
    import robustprune.methods.sparse_training as st

    ran = []
    real_fit = st.fit

    def tripwire(*a, **kw):
        ran.append(1)
        return real_fit(*a, **kw)

    monkeypatch.setattr(st, "fit", tripwire)
    x, y = blobs(200)
    for name in ("flyingbird", "flyingbird-plus"):  # 4 steps per epoch, 2 epochs: 8 steps against update_every=900
        with pytest.raises(ConfigError, match="update_every") as exc:
            robustprune.prune(TinyConvNet(), name, rate=4, data=(x, y), eps=0.1, epochs=2, pgd_steps=1,
                              train={"batch_size": 50})
        assert "\n" not in str(exc.value) and "--set update_every=N" in str(exc.value)
    assert ran == []
    # an update due on the last step of training is moved to the step after it, which never comes: refused too
    with pytest.raises(ConfigError, match="update_every"):
        robustprune.prune(TinyConvNet(), "flyingbird", rate=4, data=(x, y), eps=0.1, epochs=2, pgd_steps=1,
                          update_every=8, update_every_late=8, train={"batch_size": 50})
    assert ran == []
    # control: one step fewer between updates and the same budget trains, updates, and is not flagged
    res = robustprune.prune(TinyConvNet(), "flyingbird", rate=4, data=(x, y), eps=0.1, epochs=2, pgd_steps=1,
                            update_every=3, update_every_late=3, train={"batch_size": 50})
    assert ran and res.mechanism["acted"] is True and res.mechanism["evidence"]["topology_updates"] >= 1
    assert res.convergence["mechanism"] == res.mechanism
    assert "mechanism-did-not-act" not in result_flags(res)


def test_a_result_whose_mechanism_did_not_act_is_flagged():
    res = PruneResult(model=nn.Linear(2, 2), masks=MaskSet(), method="x", rate=2.0, rate_kind="set",
                      group="unstructured", achieved_compression=2.0, settings={},
                      mechanism=mechanism("x: something happens", False, steps=0))
    assert result_flags(res) == ["mechanism-did-not-act"]
    assert "mechanism-did-not-act" in FLAG_TEXT
    res.mechanism = mechanism("x: something happens", True, steps=3)
    assert result_flags(res) == []
    assert res.summary()["mechanism"]["acted"] is True


def test_harp_with_zero_pruning_steps_is_flagged_and_learning_nothing_is_refused():
    x, y = blobs(128)
    torch.manual_seed(0)
    res = robustprune.prune(TinyConvNet(), "harp", rate=10, data=(x, y), eps=0.1, epochs=0, pgd_steps=1)
    assert res.steps == 0 and res.mechanism["acted"] is False
    assert res.mechanism["evidence"]["pruning_steps"] == 0
    assert "mechanism-did-not-act" in result_flags(res)
    torch.manual_seed(0)
    ok = robustprune.prune(TinyConvNet(), "harp", rate=10, data=(x, y), eps=0.1, epochs=1, pgd_steps=1,
                           prune={"batch_size": 64}, finetune={"epochs": 0})
    assert ok.mechanism["acted"] is True and ok.mechanism["evidence"]["pruning_steps"] > 0
    assert "mechanism-did-not-act" not in result_flags(ok)
    with pytest.raises(ConfigError, match="rate_lr_factor"):
        robustprune.prune(TinyConvNet(), "harp", rate=10, data=(x, y), eps=0.1, epochs=1, train_scores=False,
                          rate_lr_factor=0)


def test_harp_with_zero_epochs_is_flagged_in_the_cli_output_and_the_sidecar(lenet_base, tmp_path, monkeypatch,
                                                                             capsys):
    base, data = lenet_base
    code, out, err = cli(monkeypatch, capsys, "prune", str(base), "--method", "harp", "--rate", "10", "--epochs",
                         "0", "--data-dir", str(data), "--out", str(tmp_path))
    assert code == 0, err
    assert FLAG_TEXT["mechanism-did-not-act"] in out + err
    meta = json.loads(next(tmp_path.glob("*harp-c10.json")).read_text())
    assert "mechanism-did-not-act" in meta["flags"]
    assert meta["prune_result"]["mechanism"]["acted"] is False


def test_twin_rep_robust_bird_and_admm_state_their_mechanism():
    x, y = blobs(128)
    torch.manual_seed(0)
    tw = robustprune.prune(TinyConvNet(), "twin-rep", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1,
                           train={"batch_size": 64})
    assert tw.mechanism["acted"] is True and tw.mechanism["evidence"]["warmup_steps"] >= 1
    tw0 = robustprune.prune(TinyConvNet(), "twin-rep", rate=2, data=(x, y), eps=0.1, epochs=0, pgd_steps=1)
    assert tw0.mechanism["acted"] is False and "mechanism-did-not-act" in result_flags(tw0)
    rb = robustprune.prune(TinyConvNet(), "robustbird", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1,
                           natural={"batch_size": 64}, adversarial={"batch_size": 64})
    assert rb.mechanism["acted"] is True
    assert rb.mechanism["evidence"]["how"].startswith(("early bird", "fallback"))
    rb0 = robustprune.prune(TinyConvNet(), "robustbird", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1,
                            natural={"epochs": 0}, adversarial={"batch_size": 64})
    assert rb0.mechanism["acted"] is False
    ad = robustprune.prune(TinyConvNet(), "admm-irregular", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1,
                           admm={"batch_size": 64}, retrain={"epochs": 0})
    assert ad.mechanism["acted"] is True and ad.mechanism["evidence"]["zu_updates"] >= 1
    ad0 = robustprune.prune(TinyConvNet(), "admm-irregular", rate=2, data=(x, y), eps=0.1, epochs=1, pgd_steps=1,
                            admm={"epochs": 0}, retrain={"batch_size": 64})
    assert ad0.mechanism["acted"] is False and "mechanism-did-not-act" in result_flags(ad0)


def test_twin_rep_from_scratch_reinitialises_the_given_weights_seeded():
    x, y = blobs(96)
    outs = []
    for given in (0, 1):
        torch.manual_seed(given)  # two different given models ...
        net = TinyConvNet()
        robustprune.prune(net, "twin-rep-filter", rate=2, data=(x, y), eps=0.1, epochs=0, pgd_steps=1,
                          from_scratch=True, init="ones", seed=3)
        outs.append(net[1].weight.detach().clone())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)  # ... the same start: the seed's, not the model's
    torch.manual_seed(0)
    net = TinyConvNet()
    w = net[1].weight.detach().clone()
    robustprune.prune(net, "twin-rep-filter", rate=2, data=(x, y), eps=0.1, epochs=0, pgd_steps=1, init="ones")
    kept = net[1].weight.detach() != 0
    torch.testing.assert_close(net[1].weight.detach()[kept], w[kept], rtol=0, atol=0)  # default: the given weights
