"""Sparsity in the field's words: ``--sparsity 0.99`` is ``--rate 100`` everywhere a rate is taken (CLI ``prune``,
a study's ``sparsity`` / ``method_sparsity`` / ``group_sparsity``, ``robustprune.prune(sparsity=)``), with one-line
errors; and what a model lost is counted one way for every method and stored on every result and model row:
achieved sparsity over every Conv2d / Linear weight, conv filters removed, dense FLOPs removed (slim model vs the
unpruned architecture)."""

from __future__ import annotations

import dataclasses
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import cli, write_learnable_mnist
from robustprune.errors import ConfigError
from robustprune.rates import merge_rates, rate_from_sparsity, sparsity_from_rate, sparsity_percent
from robustprune.study.spec import StudySpec, load_study_spec


# ---------------------------------------------------------------------------------------------- the conversion
def test_sparsity_is_rate_one_over_one_minus_s_exactly():
    assert [rate_from_sparsity(s) for s in (0.9, 0.95, 0.99, 0.5, 0.75, 0.0)] == [10.0, 20.0, 100.0, 2.0, 4.0, 1.0]
    assert rate_from_sparsity("99%") == 100.0 and rate_from_sparsity("0.99") == 100.0
    assert 1 / (1 - 0.99) != 100.0  # floating point: the rounding is what makes the model ids equal
    assert sparsity_from_rate(100) == 0.99 and sparsity_from_rate(None) is None
    assert [sparsity_percent(c) for c in (1, 4, 16, 20, 100)] == ["0", "75", "93.75", "95", "99"]
    assert merge_rates([100], [0.99]) == [100.0] and merge_rates(None, [0.9]) == [10.0]
    assert merge_rates([4], None) == [4.0] and merge_rates(None, None) is None


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, 99, "x", float("nan"), "150%"])
def test_out_of_range_sparsity_is_one_line_naming_option_range_and_example(bad):
    with pytest.raises(ConfigError) as exc:
        rate_from_sparsity(bad, what="--sparsity", example="--sparsity 0.99 (rate 100)")
    msg = str(exc.value)
    assert "\n" not in msg and "--sparsity" in msg and "[0, 1)" in msg and "e.g. --sparsity 0.99" in msg
    if bad == 99:
        assert "did you mean 0.99" in msg


def test_rate_and_sparsity_must_agree():
    with pytest.raises(ConfigError, match=r"--rate 10 and --sparsity 0.99 \(= rate 100\) disagree"):
        merge_rates([10], [0.99])
    with pytest.raises(ConfigError, match="disagree"):
        merge_rates([2, 4], [0.5])


# ---------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch natural lenet5-caffe on a tiny synthetic MNIST: (checkpoint, data folder)."""
    from robustprune.cli.main import main

    data = write_learnable_mnist(tmp_path_factory.mktemp("mnist"), n_train=5200, n_test=40)
    out = tmp_path_factory.mktemp("ckpt") / "base.safetensors"
    argv = sys.argv
    sys.argv = ["robustprune", "train", "--dataset", "mnist", "--data-dir", str(data), "--val-size", "100",
                "--objective", "natural", "--epochs", "1", "--train-limit", "500", "--out", str(out), "-q"]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code in (0, None)
    return out, data


def _prune(monkeypatch, capsys, ckpt, data, out, *rate_args):
    return cli(monkeypatch, capsys, "prune", str(ckpt), "--data-dir", str(data), "--method",
               "magnitude-unstructured-global", "--set", "schedule=one-shot", "--set", "finetune.epochs=0",
               "--train-limit", "100", "--out", str(out), "-q", *rate_args)


def test_prune_sparsity_gives_the_model_of_the_equal_rate(monkeypatch, capsys, checkpoint, tmp_path):
    from robustprune.checkpoint import load_checkpoint

    ckpt, data = checkpoint
    code, out_r, err = _prune(monkeypatch, capsys, ckpt, data, tmp_path / "r", "--rate", "4")
    assert code == 0, err
    code, out_s, err = _prune(monkeypatch, capsys, ckpt, data, tmp_path / "s", "--sparsity", "0.75")
    assert code == 0, err
    code, out_b, err = _prune(monkeypatch, capsys, ckpt, data, tmp_path / "b", "--sparsity", "75%", "--rate", "4")
    assert code == 0, err
    files = [p / "base-magnitude-unstructured-global-c4.safetensors" for p in (tmp_path / "r", tmp_path / "s",
                                                                               tmp_path / "b")]
    assert all(f.exists() for f in files)  # the same name: the same rate
    (m_r, meta_r, _), (m_s, meta_s, _) = (load_checkpoint(f, "cpu") for f in files[:2])
    assert meta_r["config"]["rate"] == meta_s["config"]["rate"] == 4.0
    assert all(torch.equal(a, b) for a, b in zip(m_r.state_dict().values(), m_s.state_dict().values()))
    assert meta_s["achieved_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert "c=4 (sparsity 75 %)" in out_s


@pytest.mark.parametrize("args, words", [
    (("--sparsity", "1.5"), ["--sparsity", "[0, 1)", "e.g. --sparsity 0.99"]),
    (("--sparsity", "99"), ["--sparsity", "did you mean 0.99"]),
    (("--sparsity", "ninety"), ["--sparsity", "[0, 1)"]),
    (("--rate", "10", "--sparsity", "0.99"), ["--rate 10 and --sparsity 0.99", "disagree"]),
])
def test_prune_sparsity_errors_are_one_line_exit_2(monkeypatch, capsys, checkpoint, tmp_path, args, words):
    ckpt, data = checkpoint
    code, _, err = _prune(monkeypatch, capsys, ckpt, data, tmp_path / "x", *args)
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_prune_sparsity_refused_for_a_learned_rate(monkeypatch, capsys, checkpoint, tmp_path):
    ckpt, data = checkpoint
    code, _, err = cli(monkeypatch, capsys, "prune", str(ckpt), "--data-dir", str(data), "--method", "anp-bbd",
                       "--sparsity", "0.9", "--out", str(tmp_path), "-q")
    assert code == 2 and "learns its compression rate; drop --sparsity" in err


# --------------------------------------------------------------------------------------------------- the API
def test_api_sparsity_is_the_rate():
    import robustprune

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 1, 4, 4, generator=g), torch.randint(0, 3, (48,), generator=g)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

    kw = dict(data=(x, y), eps=0.1, schedule="one-shot", **{"finetune.epochs": 0})
    a = robustprune.prune(net(), "magnitude-unstructured-global", sparsity=0.75, **kw)
    b = robustprune.prune(net(), "magnitude-unstructured-global", rate=4, **kw)
    assert a.rate == b.rate == 4.0 and a.achieved_compression == b.achieved_compression == pytest.approx(4.0, rel=0.05)
    assert robustprune.prune(net(), "magnitude-unstructured-global", sparsity="75%", rate=4, **kw).rate == 4.0
    with pytest.raises(ConfigError, match=r"sparsity= must be in \[0, 1\)"):
        robustprune.prune(net(), "magnitude-unstructured-global", sparsity=1.0, **kw)
    with pytest.raises(ConfigError, match="disagree"):
        robustprune.prune(net(), "magnitude-unstructured-global", sparsity=0.9, rate=4, **kw)


# ---------------------------------------------------------------------------------------------- the study spec
def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_study_sparsity_keys_are_the_rate_keys(tmp_path):
    spec = load_study_spec(_write(tmp_path, """
methods: [magnitude-unstructured-global, hydra, magnitude-filter-global, admm-filter, anp-bbd]
sparsity: [0.5, 0.75]
method_sparsity: {hydra: ["99%"]}
group_sparsity: {unstructured: [0.9, 0.95, 0.99], structured: [0.5, 0.75, 0.9]}
"""))
    assert spec.compression == (1.0, 2.0, 4.0)
    assert spec.method_rates == {"hydra": (100.0,)}
    assert spec.group_rates == {"unstructured": (10.0, 20.0, 100.0), "structured": (2.0, 4.0, 10.0)}
    assert [spec.rates_for(m) for m in spec.methods] == [[10.0, 20.0, 100.0], [100.0], [2.0, 4.0, 10.0],
                                                         [2.0, 4.0, 10.0], [None]]
    # the same grid in rates: the same spec (so the same model ids)
    same = load_study_spec(_write(tmp_path, """
methods: [magnitude-unstructured-global, hydra, magnitude-filter-global, admm-filter, anp-bbd]
compression: [1, 2, 4]
method_rates: {hydra: [100]}
group_rates: {unstructured: [10, 20, 100], structured: [2, 4, 10]}
"""))
    assert same == spec
    # a group key wins over `structured`, a method's own rates over its group's, compression is the fallback
    spec = StudySpec(methods=("magnitude-filter-global", "magnitude-kernel-global", "magnitude-unstructured-global"),
                     group_sparsity={"filter": [0.5], "structured": [0.9]}, compression=(1, 8))
    assert [spec.rates_for(m) for m in spec.methods] == [[2.0], [10.0], [8.0]]


@pytest.mark.parametrize("text, words", [
    ("sparsity: [1.2]", ["sparsity must be in [0, 1)", "e.g. sparsity: [0.9, 0.95, 0.99]"]),
    ("compression: [1, 10]\nsparsity: [0.99]", ["compression 1 10 and sparsity 0.99 (= rate 100) disagree"]),
    ("method_rates: {hydra: [10]}\nmethod_sparsity: {hydra: [0.99]}", ["method_rates of hydra", "disagree"]),
    ("group_sparsity: {filters: [0.5]}", ["'filters' is not a pruning group", "structured"]),
    ("group_sparsity: {unstructured: [100]}", ["group_sparsity of unstructured must be in [0, 1)"]),
    ("leaderboard: nope", ["unknown leaderboard 'nope'", "apb"]),
])
def test_study_sparsity_errors_are_one_line(tmp_path, text, words):
    with pytest.raises(ConfigError) as exc:
        load_study_spec(_write(tmp_path, "methods: [hydra]\n" + text))
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_study_cli_sparsity_error_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "study", str(_write(tmp_path, "sparsity: [0.9, 2]\n")), "--plan")
    assert code == 2 and err.count("error: ") == 1 and "sparsity must be in [0, 1)" in err


def test_plan_prints_grid_sparsity_rates_and_cost(monkeypatch, capsys, tmp_path):
    path = _write(tmp_path, """
name: planned
datasets: [cifar10]
architectures: [resnet18]
methods: [hydra, magnitude-filter-global]
group_sparsity: {unstructured: [0.9, 0.99], structured: [0.5]}
val_size: 5000
base_train: {epochs: 10}
prune_epochs: 3
finetune_limit: null
method_settings: {magnitude-filter-global: {schedule: one-shot}}
attacks: [{name: apgd, eps: [8/255]}]
transfer: false
cost: {train_epoch_s: 10, eval_model_s: 60, basis: test figures}
""")
    code, out, err = cli(monkeypatch, capsys, "study", str(path), "--plan", "--out", str(tmp_path / "never"))
    assert code == 0, err
    assert not (tmp_path / "never").exists()  # nothing ran
    assert "1 base model(s); 3 pruned model(s); 4 models" in out
    hydra = next(ln for ln in out.splitlines() if ln.strip().startswith("hydra"))
    assert hydra.split()[1:] == ["unstructured", "90", "99", "10", "100", "12"]  # 2 phases x 3 epochs x 2 rates
    filt = next(ln for ln in out.splitlines() if ln.strip().startswith("magnitude-filter-global"))
    assert filt.split()[1:] == ["filter", "50", "2", "3"]
    # 45,000 images: base 10 epochs + pruning 15 epochs = 25 x 45,000 / 50,000 = 22.5 epochs of 50,000 images;
    # priced pass by pass (the running estimate's cost model): 10 s is one epoch of the base objective (fast-at, 2
    # passes per image), HYDRA's two TRADES-10 phases cost 12 passes per image (6x), magnitude's fine-tuning the
    # study's fast-at: training 12.3 min; evaluation 4 models x 60 s = 4.0 min
    assert "training: 1,125,000 training images processed in all (base 450,000, pruning 675,000)" in out
    assert "= 22 epochs of 50,000 images" in out or "= 23 epochs of 50,000 images" in out
    assert "estimated cost: training 12.3 min" in out and "evaluation 4.0 min" in out
    assert "= 16.3 min on one worker" in out and "basis: test figures" in out
    assert "critical path: 14.8 min (base model then hydra" in out  # base + HYDRA's chain; magnitude runs beside


# ------------------------------------------------------------------------------ what a model lost, one way
class TwoConvs(nn.Module):
    """conv1 (1 -> 8 filters) -> relu -> conv2 (8 -> 4) -> relu -> linear: 12 conv filters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def two_of_eight_zeroed() -> nn.Module:
    m = TwoConvs()
    with torch.no_grad():
        m.conv1.weight[[1, 5]] = 0
        m.conv1.bias[[1, 5]] = 0
    return m


# dense MACs per 6x6 input: conv1 36 x 8 x 9 = 2,592; conv2 36 x 4 x 8 x 9 = 10,368; fc 144 x 3 = 432 -> 13,392.
# slim (2 filters of conv1 cut, with conv2's 2 input channels): 36 x 6 x 9 + 36 x 4 x 6 x 9 + 432 = 10,152.
KNOWN = {"achieved_sparsity": 18 / (72 + 288 + 432), "filters_removed": 2 / 12, "flops_removed": 1 - 10_152 / 13_392}


def test_structure_of_a_filter_pruned_model_has_the_known_answer():
    from robustprune.evaluation import size_metrics
    from robustprune.methods.interface import achieved_compression
    from robustprune.sparsity import structure_metrics

    m = two_of_eight_zeroed()
    st = structure_metrics(m, (1, 6, 6))
    assert (st["filters_base"], st["filters_left"], st["macs_base"], st["macs_slim"]) == (12, 10, 13_392, 10_152)
    for k, v in KNOWN.items():
        assert st[k] == pytest.approx(v, abs=1e-12), k
    assert st["achieved_sparsity"] == pytest.approx(1 - 1 / achieved_compression(m), abs=1e-12)
    sizes = size_metrics(m, (1, 6, 6))
    assert {k: sizes[k] for k in KNOWN} == pytest.approx(KNOWN)
    # unstructured zeros remove no filter and no dense FLOP; a filter with zero weights but a live bias stays
    # (it outputs a constant), yet counts as a removed filter
    u = TwoConvs()
    with torch.no_grad():
        u.conv2.weight[:, :, 0, 0] = 0
    assert (structure_metrics(u, (1, 6, 6))["filters_removed"], structure_metrics(u, (1, 6, 6))["flops_removed"]) \
        == (0.0, 0.0)
    b = TwoConvs()
    with torch.no_grad():
        b.conv1.weight[3] = 0  # bias 3 stays: not cut, no FLOPs saved, but no weight of that filter is left
    st = structure_metrics(b, (1, 6, 6))
    assert st["filters_removed"] == pytest.approx(1 / 12) and st["flops_removed"] == 0.0
    # a slim model against its unpruned base
    from robustprune.sparsity import slim_model

    slim = slim_model(two_of_eight_zeroed(), masks={}, example=torch.rand(2, 1, 6, 6)).model
    st = structure_metrics(slim, (1, 6, 6), base=TwoConvs())
    assert st["filters_removed"] == pytest.approx(2 / 12) and st["flops_removed"] == pytest.approx(
        KNOWN["flops_removed"])


def test_study_evaluation_stores_the_structure_on_result_and_model_rows(tmp_path):
    """Through the study's own evaluation path (``ModelEvaluator``): every result row and the model row carry
    achieved sparsity, filters removed and FLOPs removed, with the known answer."""
    from robustprune.data import Split, Splits, get_spec
    from robustprune.study.model_eval import ModelEvaluator
    from robustprune.study.runner import StudyOutcome
    from robustprune.study.store import ResultsStore

    spec = StudySpec(eval_n=8, attacks=({"name": "pgd", "eps": [0.1], "steps": 1},), transfer=False,
                     vulnerability=False)
    ds = dataclasses.replace(get_spec("fashion-mnist"), shape=(1, 6, 6))  # the model's 6x6 inputs
    g = torch.Generator().manual_seed(0)
    split = Split(x=torch.rand(8, 1, 6, 6, generator=g), y=torch.randint(0, 3, (8,), generator=g))
    outcome = StudyOutcome(tmp_path, tmp_path / "results.sqlite")
    with ResultsStore(outcome.db_path) as store:
        store.put_model({"model_id": "m1", "kind": "pruned", "method": "magnitude-filter-global", "group": "filter",
                         "rate": 4.0, "rate_kind": "set", "seed": 0})
        base = {"dataset": ds.name, "architecture": "two-convs", "width": 1.0, "seed": 0,
                "method": "magnitude-filter-global", "group": "filter", "rate": 4.0, "rate_kind": "set",
                "settings": "{}", "flags": "[]"}
        ModelEvaluator(spec, torch.device("cpu"), lambda _m: None, outcome).evaluate(
            store, "m1", two_of_eight_zeroed(), Splits(spec=ds, train=split, val=split, test=split), base, 0.0)
        rows = store.results()
        model = store.get_model("m1")
    assert len(rows) == 2  # clean + pgd
    for r in rows:
        assert {k: r[k] for k in KNOWN} == pytest.approx(KNOWN)
    assert {k: model[k] for k in KNOWN} == pytest.approx(KNOWN)


# -------------------------------------------------------------------------------------------------- the store
def test_a_schema_3_database_without_the_new_columns_gets_them_and_is_still_read(tmp_path):
    from robustprune.study.store import MODEL_COLUMNS, RESULT_COLUMNS, ResultsStore, _cols

    new = {"models": ("achieved_sparsity", "filters_removed", "flops_removed"),
           "results": ("filters_removed", "flops_removed")}
    db = tmp_path / "results.sqlite"
    con = sqlite3.connect(db)  # a schema-3 file as written before these columns existed
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute(f"CREATE TABLE models ({_cols({k: v for k, v in MODEL_COLUMNS.items() if k not in new['models']})})")
    con.execute("CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                f"{_cols({k: v for k, v in RESULT_COLUMNS.items() if k not in new['results']})})")
    con.execute("INSERT INTO meta VALUES ('robustprune_schema', '3')")
    con.execute("INSERT INTO models (model_id, method, rate, rate_kind) VALUES ('old', 'unpruned', 1.0, 'none')")
    con.execute("INSERT INTO results (model_id, dataset, architecture, method, rate, rate_kind, attack, eps, eps_str, "
                "attack_hash, achieved_sparsity) VALUES ('old', 'd', 'a', 'unpruned', 1.0, 'none', 'clean', 0, '0', "
                "'clean', 0.0)")
    con.commit()
    con.close()
    with ResultsStore(db, readonly=True) as store:  # read as it is: the new columns read as None
        assert store.results()[0]["filters_removed"] is None and store.get_model("old")["flops_removed"] is None
    with ResultsStore(db) as store:  # opened for writing: the columns are added in place
        store.update_model("old", {"achieved_sparsity": 0.0, "filters_removed": 0.25, "flops_removed": 0.5})
        row = store.get_model("old")
        assert (row["filters_removed"], row["flops_removed"], row["status"]) == (0.25, 0.5, "done")
        with pytest.raises(ValueError, match="unknown or JSON columns"):
            store.update_model("old", {"settings": "{}"})
    con = sqlite3.connect(db)
    have = {r[1] for r in con.execute("PRAGMA table_info(results)")}
    con.close()
    assert set(new["results"]) <= have


def test_a_model_that_cannot_be_slimmed_has_no_flops_removed_but_its_zero_filters_count(monkeypatch):
    import robustprune.sparsity.slim as slim
    from robustprune.errors import RobustPruneError
    from robustprune.sparsity import structure_metrics

    def refuse(*a, **k):
        raise RobustPruneError("the slim model's logits differ")

    monkeypatch.setattr(slim, "slim_model", refuse)
    st = structure_metrics(two_of_eight_zeroed(), (1, 6, 6))
    assert st["flops_removed"] is None and st["macs_slim"] is None and "differ" in st["slim_error"]
    assert st["filters_removed"] == pytest.approx(2 / 12) and st["achieved_sparsity"] == pytest.approx(
        KNOWN["achieved_sparsity"])


def test_plan_counts_an_iterative_chain_once_per_step():
    from robustprune.study.plan import study_plan

    plan = study_plan(load_study_spec(None))  # the main job
    by = {m.name: m for m in plan.methods}
    # magnitude-unstructured-global halves the remaining weights per step up to c = 16: 4 steps of 1 epoch
    assert by["magnitude-unstructured-global"].rates == [2.0, 4.0, 8.0, 16.0]
    assert by["magnitude-unstructured-global"].epochs_per_base == 4
    # admm-irregular: 5 ADMM epochs + 1 retraining epoch (the task's) per rate, two rates
    assert by["admm-irregular"].epochs_per_base == 12 and by["anp-bbd"].rates == [None]
    assert plan.images["fashion-mnist"] == {"train": 55_000, "prune": 20_000, "test": 1_000}
    assert plan.cost_seconds() is None  # the main job states no throughput


def test_harp_at_sparsity_099_keeps_exactly_one_percent_with_learned_layer_rates(monkeypatch, capsys, checkpoint,
                                                                                    tmp_path):
    """``robustprune prune BASE --method harp --sparsity 0.99``: exactly round(N / 100) of the counted weights (every
    Conv2d and Linear weight) stay non-zero, and the per-layer keep fractions HARP learned differ between layers."""
    from robustprune.checkpoint import load_checkpoint
    from robustprune.sparsity import prunable_layers

    ckpt, data = checkpoint
    code, out, err = cli(monkeypatch, capsys, "prune", str(ckpt), "--data-dir", str(data), "--method", "harp",
                         "--sparsity", "0.99", "--epochs", "1", "--train-limit", "200", "--set", "pgd_steps=1",
                         "--set", "gamma0=1.0", "--set", "rate_lr_factor=10", "--set", "finetune.epochs=0",
                         "--eps", "0.1", "--out", str(tmp_path), "-q")
    assert code == 0, err
    (path,) = tmp_path.glob("*.safetensors")
    model, meta, _ = load_checkpoint(path, "cpu")
    layers = prunable_layers(model, "unstructured")
    total = sum(m.weight.numel() for m in layers.values())
    nonzero = sum(int(torch.count_nonzero(m.weight)) for m in layers.values())
    assert nonzero == round(total / 100)
    keep = [int(torch.count_nonzero(m.weight)) / m.weight.numel() for m in layers.values()]
    assert max(keep) > 1.5 * min(keep)  # not one global k in every layer
    assert meta["achieved_sparsity"] == pytest.approx(0.99, abs=1e-4)
