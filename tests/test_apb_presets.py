"""The Adversarial Pruning Benchmark (APB, Piras et al. 2024) presets: the three study files load, their plan
prints the APB grid (unstructured 90 / 95 / 99 %, structured 50 / 75 / 90 %) and the estimated cost of their
header; APB's published numbers are copied faithfully and never mixed with ours; the report's leaderboard section
sets them beside our rows; and one preset at toy size runs through every cell.

The presets name the leader methods (harp, flyingbird, flyingbird-plus, robustbird, twin-rep, twin-rep-filter):
the tests that load them skip, saying which, only while one of those is not registered."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import cli
from robustprune.study import ResultsStore, write_report
from robustprune.study.spec import load_study_spec

STUDIES = Path(__file__).resolve().parents[1] / "studies"
APB_FILES = ["apb-cifar10-resnet18.yaml", "apb-cifar10-vgg16.yaml", "apb-svhn-resnet18.yaml"]
LEADERS = ("harp", "flyingbird", "flyingbird-plus", "robustbird", "twin-rep", "twin-rep-filter")
SEEDS = ("hydra", "admm-irregular", "admm-filter", "pwoa-irregular", "magnitude-unstructured-global",
         "magnitude-filter-global")
PUBLISHED = Path(__file__).resolve().parents[1] / "src/robustprune/study/report/apb_published.json"


def _missing_leaders() -> list[str]:
    from robustprune.methods import method_names

    names = set(method_names())
    return [m for m in LEADERS if m not in names]


def _check_leaders() -> None:
    missing = _missing_leaders()
    assert not missing, f"leader method(s) not registered: {', '.join(missing)}"


@pytest.fixture
def leaders_registered() -> None:
    """A leader method that is not registered fails every test that needs it (it never turns into skips)."""
    _check_leaders()


needs_leaders = pytest.mark.usefixtures("leaders_registered")


def test_a_deregistered_leader_fails_instead_of_skipping(monkeypatch):
    import robustprune.methods as methods

    real = methods.method_names
    monkeypatch.setattr(methods, "method_names", lambda: [m for m in real() if m != "harp"])
    with pytest.raises(AssertionError, match="not registered: harp"):
        _check_leaders()
    assert needs_leaders.mark.name == "usefixtures" and needs_leaders.mark.args == ("leaders_registered",)


# ------------------------------------------------------------------------------------------------ the files
@needs_leaders
@pytest.mark.parametrize("name", APB_FILES)
def test_apb_file_loads_with_the_apb_grid_and_evaluation(name):
    spec = load_study_spec(STUDIES / name)
    assert set(spec.methods) == set(LEADERS) | set(SEEDS) and len(spec.methods) == 12
    assert spec.leaderboard == "apb" and spec.eval_n == 10_000 and spec.eval_batch_size == 500
    for m in spec.methods:
        from robustprune.methods import get_method

        want = [10.0, 20.0, 100.0] if get_method(m).group == "unstructured" else [2.0, 4.0, 10.0]
        assert spec.rates_for(m) == want, m
    aa, fmn = spec.attacks
    assert aa.name == "autoattack" and aa.eps == (0.031,) and aa.settings()["version"] == "standard"
    assert aa.settings()["batch_size"] == 500
    assert fmn.name == "fmn-linf" and 0.031 in fmn.eps
    assert spec.base_objective.name == "pgd-at" and spec.base_objective.steps == 10
    assert spec.base_objective.eps == pytest.approx(8 / 255) and spec.finetune_limit is None
    assert spec.cost is not None and spec.cost.eval_model_s > 0


@needs_leaders
@pytest.mark.parametrize("name, hours", [("apb-cifar10-resnet18.yaml", "29.8 h"), ("apb-cifar10-vgg16.yaml", "16.8 h"),
                                         ("apb-svhn-resnet18.yaml", "35.2 h")])
def test_apb_plan_prints_grid_and_the_cost_of_the_header(monkeypatch, capsys, tmp_path, name, hours):
    code, out, err = cli(monkeypatch, capsys, "study", str(STUDIES / name), "--plan", "--out", str(tmp_path / "x"))
    assert code == 0, err
    assert not (tmp_path / "x").exists()
    assert "1 base model(s); 36 pruned model(s); 37 models" in out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith("  ") and len(ln.split()) > 4}
    for m in LEADERS + SEEDS:
        group, *rest = rows[m]
        assert rest[:6] == (["90", "95", "99", "10", "20", "100"] if group == "unstructured"
                            else ["50", "75", "90", "2", "4", "10"]), (m, rows[m])
    assert "autoattack [version=standard, batch_size=500] at eps 0.031" in out and "fmn-linf" in out
    cost = next(ln for ln in out.splitlines() if "estimated cost" in ln)
    assert cost.split(" = ")[1].startswith(hours)
    header = (STUDIES / name).read_text().split("\nname:")[0]
    assert hours.split()[0] in header or hours.split()[0].split(".")[0] in header  # the header states the same


def test_apb_files_are_shipped_and_state_their_cost():
    for name in APB_FILES:
        text = (STUDIES / name).read_text()
        assert "Expected cost on one H200" in text and "9.2 s" in text and "leaderboard: apb" in text


# ------------------------------------------------------------------------------------------ published numbers
def test_published_numbers_are_apb_readme_verbatim():
    from robustprune.study.report.leaderboard import load_published, published_cell

    from robustprune.study.report import leaderboard

    pub = load_published("apb")
    # the loader reads the file of this source tree (not an installed copy elsewhere) ...
    assert (leaderboard.PUBLISHED_DIR / "apb_published.json").resolve() == PUBLISHED.resolve()
    # ... and every cell is a README percentage as printed: two decimals, AutoAttack accuracy within clean accuracy
    for c in pub["cells"]:
        for k in ("clean", "autoattack"):
            assert 0 < c[k] < 100 and round(c[k], 2) == c[k], c
        assert c["autoattack"] < c["clean"], c
    src = pub["source"]
    assert src["repository"] == "pralab/AdversarialPruningBenchmark" and src["file"] == "README.md"
    assert len(src["commit"]) == 40 and pub["eps"] == 0.031 and pub["attack"] == "autoattack"
    for (ds, arch, st, sp, name), (clean, aa) in {
        ("cifar10", "resnet18", "unstructured", 99, "HYDRA"): (72.21, 38.80),
        ("cifar10", "resnet18", "unstructured", 99, "HARP"): (83.11, 45.50),
        ("cifar10", "resnet18", "unstructured", 90, "FlyingBird"): (80.69, 46.49),
        ("cifar10", "resnet18", "unstructured", 95, "FlyingBird"): (77.42, 46.10),
        ("cifar10", "resnet18", "structured", 90, "TwinRep"): (78.41, 44.30),
    }.items():
        c = published_cell(pub, ds, arch, st, sp, name)
        assert (c["clean"], c["autoattack"]) == (clean, aa)
    assert published_cell(pub, "svhn", "resnet18", "unstructured", 90, "RADMM") is None  # '-' in APB: no cell
    keys = [(c["dataset"], c["architecture"], c["structure"], c["sparsity"], c["method"]) for c in pub["cells"]]
    assert len(keys) == len(set(keys))
    assert {c["sparsity"] for c in pub["cells"] if c["structure"] == "unstructured"} == {90, 95, 99}
    assert {c["sparsity"] for c in pub["cells"] if c["structure"] == "structured"} == {50, 75, 90}


def test_every_method_apb_names_is_one_of_ours_or_a_pending_leader():
    from robustprune.methods import method_names

    pub = json.loads(PUBLISHED.read_text())
    ours = {m for by in pub["methods"].values() for ms in by.values() for m in ms}
    assert ours <= set(method_names()) | set(LEADERS)


# ------------------------------------------------------------------------------------- the leaderboard section
def _rows(store: ResultsStore, model_id: str, method: str, group: str, rate: float, clean: float,
          aa: float | None, parent: str | None = None) -> None:
    from robustprune.utils import config_hash

    unpruned = method == "unpruned"
    key = config_hash({"m": method, "r": rate})
    store.put_model({"model_id": model_id, "model_key": key, "kind": "base" if unpruned else "pruned",
                     "parent_id": parent, "dataset": "cifar10", "architecture": "resnet18", "method": method,
                     "group": "none" if unpruned else group, "rate": rate,
                     "rate_kind": "none" if unpruned else "set", "seed": 0, "achieved_sparsity": 1 - 1 / rate,
                     "filters_removed": 0.0, "flops_removed": 0.0})
    common = {"model_id": model_id, "model_key": key, "dataset": "cifar10", "architecture": "resnet18",
              "method": method, "group": "none" if unpruned else group, "rate": rate,
              "rate_kind": "none" if unpruned else "set", "achieved_sparsity": 1 - 1 / rate,
              "achieved_compression": rate, "filters_removed": 0.0, "flops_removed": 0.0, "clean_acc": clean,
              "n_eval": 10_000, "seed": 0}
    rows = [{**common, "attack": "clean", "eps": 0.0, "eps_str": "0", "attack_hash": "clean", "robust_acc": clean}]
    if aa is not None:
        cfg = {"name": "autoattack", "version": "standard"}
        rows.append({**common, "attack": "autoattack", "norm": "Linf", "eps": 0.031, "eps_str": "0.031",
                     "attack_config": cfg, "attack_hash": config_hash(cfg), "robust_acc": aa})
    store.put_results(rows)


def _md_table(md: str, heading: str) -> list[list[str]]:
    text = md.split(heading, 1)[1]
    rows, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif started:
            break
    return rows


def test_leaderboard_sets_apb_numbers_beside_ours_never_in_our_columns(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.set_meta("spec", {"name": "toy-apb", "leaderboard": "apb"})
        _rows(store, "base", "unpruned", "none", 1.0, 0.84, 0.47)
        _rows(store, "h99", "hydra", "unstructured", 100.0, 0.70, 0.36, parent="base")
        _rows(store, "m99", "magnitude-unstructured-global", "unstructured", 100.0, 0.60, 0.30, parent="base")
        _rows(store, "a10", "admm-filter", "filter", 10.0, 0.65, 0.33, parent="base")
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Leaderboard: Adversarial Pruning Benchmark (APB), Piras et al. 2024" in md
    table = _md_table(md, "## Leaderboard")
    head = table[0]
    assert head[-4:] == ["ours: clean (%)", "ours: autoattack@0.031 (%)", "APB published: clean (%)",
                         "APB published: AutoAttack (%)"]
    by = {r[2]: dict(zip(head, r)) for r in table[1:]}
    h = by["hydra"]
    assert (h["sparsity (%)"], h["APB name"], h["c"]) == ("99", "HYDRA", "100")
    assert (h["ours: clean (%)"], h["ours: autoattack@0.031 (%)"]) == ("70.00", "36.00")
    assert (h["APB published: clean (%)"], h["APB published: AutoAttack (%)"]) == ("72.21", "38.80")
    a = by["admm-filter"]  # RADMM, structured 90 %
    assert (a["structure"], a["sparsity (%)"], a["APB name"]) == ("structured", "90", "RADMM")
    assert (a["APB published: clean (%)"], a["APB published: AutoAttack (%)"]) == ("70.53", "37.30")
    m = by["magnitude-unstructured-global"]  # no APB entry: their columns stay empty, ours are filled
    assert m["APB name"] == "" and m["APB published: clean (%)"] == "" and m["ours: clean (%)"] == "60.00"
    assert by["unpruned"]["APB published: clean (%)"] == ""
    ours = {v for r in table[1:] for k, v in zip(head, r) if k.startswith("ours")}
    theirs = {v for r in table[1:] for k, v in zip(head, r) if k.startswith("APB published")} - {""}
    assert not ours & theirs
    assert "not ours" in md and "0ae46e7b0ed3" in md
    html = (tmp_path / "report.html").read_text()
    assert "Leaderboard: Adversarial Pruning Benchmark" in html and "72.21" in html

    # no leaderboard key: no section (and a study's own tables never carry APB's numbers)
    plain = tmp_path / "plain"
    with ResultsStore(plain / "results.sqlite") as store:
        store.set_meta("spec", {"name": "toy"})
        _rows(store, "base", "unpruned", "none", 1.0, 0.84, 0.47)
        _rows(store, "h99", "hydra", "unstructured", 100.0, 0.70, 0.36, parent="base")
    write_report(plain)
    md = (plain / "report.md").read_text()
    assert "Leaderboard" not in md and "72.21" not in md


def test_leaderboard_says_when_our_robust_column_is_not_autoattack(tmp_path):
    from robustprune.utils import config_hash

    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.set_meta("spec", {"name": "toy-apb", "leaderboard": "apb"})
        _rows(store, "h99", "hydra", "unstructured", 100.0, 0.70, None)
        cfg = {"name": "apgd", "steps": 50}
        store.put_results([{"model_id": "h99", "dataset": "cifar10", "architecture": "resnet18", "method": "hydra",
                            "group": "unstructured", "rate": 100.0, "rate_kind": "set", "attack": "apgd",
                            "norm": "Linf", "eps": 0.031, "eps_str": "0.031", "attack_config": cfg,
                            "attack_hash": config_hash(cfg), "robust_acc": 0.4, "n_eval": 10_000, "seed": 0,
                            "model_key": config_hash({"m": "hydra", "r": 100.0})}])
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "ours: apgd@0.031 (%)" in md and "No autoattack rows in this study" in md


# ------------------------------------------------------------------------------------ a toy run of one preset
def _fake_cifar10(folder: Path, n_train: int, n_test: int) -> Path:
    """CIFAR-10 python batches (Python-3 pickles) of learnable random images: class k brightens row block k."""
    rng = np.random.default_rng(0)
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)

    def batch(n: int) -> dict[str, Any]:
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 80, (n, 3, 32, 32)).astype(np.uint8)
        for k in range(10):
            x[y == k, :, 3 * k:3 * k + 3, :] += 150
        return {"batch_label": "synthetic", "data": x.reshape(n, 3072), "labels": [int(v) for v in y],
                "filenames": [f"img_{i}.png" for i in range(n)]}

    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5), protocol=4))
    (d / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=4))
    return folder


def _toy_phases(settings: Any, epochs: float, lr: float) -> Any:
    """``settings`` with every training phase (a mapping with ``epochs``) at ``epochs`` epochs and learning rate
    ``lr`` (a width-1/16 ResNet-18 keeps 4 channels per layer: the papers' lr 0.1 blows HYDRA's scores up there)."""
    if isinstance(settings, dict):
        out = {k: _toy_phases(v, epochs, lr) for k, v in settings.items()}
        if "epochs" in out:
            out.update(epochs=epochs, lr=lr)
        return out
    return settings


def _toy_updates(settings: dict[str, Any]) -> dict[str, Any]:
    """A toy budget of a few steps never reaches Flying Bird's first topology update (900 steps), which is refused
    before any work: the Flying Birds update every step here, so their mechanism acts."""
    for name in ("flyingbird", "flyingbird-plus"):
        if name in settings:
            settings[name] = {**settings[name], "update_every": 1, "update_every_late": 1}
    return settings


@needs_leaders
@pytest.mark.slow
def test_toy_run_of_the_cifar10_resnet18_preset_goes_through_every_cell(tmp_path):
    """apb-cifar10-resnet18.yaml as it is, shrunk: a width-1/16 ResNet-18, 40 synthetic CIFAR-shaped training
    images, 8 test points, one epoch per phase, attacks cut to a few iterations. Every cell (1 base + 12 methods x 3
    sparsities) runs, stores its structure, and the report has the APB leaderboard."""
    import importlib.util

    import yaml

    from robustprune.methods import get_method
    from robustprune.study import run_study

    data = _fake_cifar10(tmp_path / "data", n_train=40, n_test=8)
    raw = yaml.safe_load((STUDIES / "apb-cifar10-resnet18.yaml").read_text())
    aa = ({"name": "autoattack", "eps": [0.031], "version": "custom", "attacks_to_run": ["apgd-ce"],
           "apgd_n_iter": 2, "batch_size": 8} if importlib.util.find_spec("pyautoattack") is not None
          else {"name": "apgd", "eps": [0.031], "steps": 2, "n_target_classes": 1})
    overrides = {
        "data_dir": str(data), "architectures": ["resnet18*0.0625"], "val_size": 12, "eval_n": 8,
        "eval_batch_size": 8, "precision": "fp32",
        "base_train": {**raw["base_train"], "epochs": 1, "batch_size": 16, "progress": False},
        "base_objective": {"name": "pgd-at", "eps": "8/255", "steps": 1},
        "finetune_objective": {"name": "pgd-at", "eps": "8/255", "steps": 1},
        "prune_epochs": 1, "method_settings": _toy_updates(_toy_phases(raw["method_settings"], 1, 0.01)),
        "attacks": [aa, {"name": "fmn-linf", "eps": [2 / 255, 0.031], "steps": 2}],
    }
    spec = load_study_spec(STUDIES / "apb-cifar10-resnet18.yaml", overrides)
    assert spec.group_rates == load_study_spec(STUDIES / "apb-cifar10-resnet18.yaml").group_rates  # the APB grid
    outcome = run_study(spec, tmp_path / "out", log=lambda _m: None, progress=False)
    assert outcome.failures == [], [f"{f['method']} c={f['rate']}: {f['message']}" for f in outcome.failures]
    assert outcome.models_trained == 37
    with ResultsStore(tmp_path / "out" / "results.sqlite", readonly=True) as store:
        models = store.models()
        rows = store.results()
    cells = {(m["method"], m["rate"]) for m in models}
    for name in spec.methods:
        want = [10.0, 20.0, 100.0] if get_method(name).group == "unstructured" else [2.0, 4.0, 10.0]
        assert {(name, r) for r in want} <= cells, name
    for m in models:  # every model row carries what it lost, counted one way
        assert m["achieved_sparsity"] is not None and m["filters_removed"] is not None, m["method"]
    for m in models:
        if m["method"] in ("twin-rep-filter", "admm-filter", "magnitude-filter-global"):
            assert m["filters_removed"] > 0, (m["method"], m["rate"])
    assert all(r["filters_removed"] is not None for r in rows)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Leaderboard: Adversarial Pruning Benchmark" in md
    table = _md_table(md, "## Leaderboard")
    assert len(table) == 1 + 37
    hydra99 = next(r for r in table[1:] if r[2].split()[0] == "hydra" and r[1] == "99")  # (flags may follow)
    assert hydra99[-2:] == ["72.21", "38.80"]  # APB's, beside our toy numbers
