"""Bad input through the CLI: exit status 2, exactly one ``error:`` line, no traceback, output paths checked before
any work starts (so nothing computed is lost), divergence and ``--epochs 0`` refused, Ctrl-C exits 130 with one
line, clamped limits said once, ``--version``, help text on every option.

Most cases call ``robustprune.cli.main.main()`` in-process (fast); a few run the real command in a subprocess.
Data: a tiny synthetic MNIST (IDX files written into a temporary folder).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli, write_learnable_mnist

N_TEST = 60


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """400 training and N_TEST test images, 28x28, learnable (class k brightens columns 2k..2k+2)."""
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"), n_test=N_TEST)


def one_error(code: int, err: str) -> str:
    """Exit status 2, exactly one ``error:`` line on stderr, no traceback; the line is returned."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _train_args(mnist_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--val-size", "100", "--objective",
            "natural", "--epochs", "1", "--out", str(out), "-q", *extra]


@pytest.fixture(scope="module")
def checkpoint(mnist_dir, tmp_path_factory) -> Path:
    """A trained (1 epoch, natural) lenet5-caffe checkpoint on the synthetic MNIST."""
    from robustprune.cli.main import main

    out = tmp_path_factory.mktemp("ckpt") / "base.safetensors"
    argv = sys.argv
    sys.argv = ["robustprune", *_train_args(mnist_dir, out)]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code in (0, None)
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if training or evaluation starts (output paths must be refused before that)."""
    import robustprune.evaluation as evaluation
    import robustprune.methods  # noqa: F401  (imported before the patch: a module that binds `fit` on import,
    import robustprune.study  # noqa: F401   e.g. methods/admm.py, would otherwise keep the tripwire for later tests)
    import robustprune.train as train

    def boom(*a, **k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(train, "fit", boom)
    monkeypatch.setattr(evaluation, "evaluate_model", boom)


# ------------------------------------------------------------------------------------ output paths (item 11)

@pytest.mark.parametrize("where", ["proc", "file-parent", "folder"])
def test_train_out_unwritable_fails_before_training(monkeypatch, capsys, mnist_dir, tmp_path, no_work, where):
    regular = tmp_path / "a-file"
    regular.write_text("keep me")
    out = {"proc": Path("/proc/x/m.safetensors"), "file-parent": regular / "m.safetensors",
           "folder": tmp_path}[where]
    code, out_text, err = cli(monkeypatch, capsys, *_train_args(mnist_dir, out))
    line = one_error(code, err)
    assert "cannot write --out checkpoint" in line and str(out) in line, line
    assert "saved" not in out_text
    assert regular.read_text() == "keep me"


def test_evaluate_json_and_db_unwritable_fail_before_evaluating(monkeypatch, capsys, checkpoint, tmp_path, no_work):
    code, _, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--json", "/proc/x/e.json", "--n", "10")
    assert "--json file /proc/x/e.json" in one_error(code, err)
    regular = tmp_path / "f"
    regular.write_text("")
    code, _, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--db", str(regular / "r.sqlite"))
    assert "--db database" in one_error(code, err)
    code, _, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--json", str(tmp_path))
    assert "is a folder" in one_error(code, err)


def test_evaluate_batch_size_zero_is_one_line(monkeypatch, capsys, checkpoint, no_work):
    for bad in ("0", "-5"):
        code, _, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--batch-size", bad)
        assert "--batch-size must be at least 1" in one_error(code, err)


def test_check_writable_helpers(tmp_path):
    from robustprune.errors import OutputPathError, RobustPruneError
    from robustprune.utils import check_writable_dir, check_writable_file

    deep = tmp_path / "a" / "b"
    assert check_writable_dir(deep, "--out folder") == deep and deep.is_dir()
    assert list(deep.iterdir()) == []  # the probe file is gone
    f = check_writable_file(tmp_path / "c" / "m.safetensors", "checkpoint")
    assert f.parent.is_dir() and not f.exists()  # the folder is made, the file itself is not created
    regular = tmp_path / "file"
    regular.write_text("x")
    assert check_writable_file(regular, "x") == regular  # overwriting an existing file is allowed by default
    with pytest.raises(OutputPathError, match="exists already"):
        check_writable_file(regular, "x", overwrite=False)
    for bad in (Path("/proc/x"), regular, regular / "sub"):
        with pytest.raises(RobustPruneError) as exc:
            check_writable_dir(bad, "--out folder")
        assert "\n" not in str(exc.value) and f"--out folder {bad}" in str(exc.value)
    assert regular.read_text() == "x"


# ------------------------------------------------------------------------ divergence and epochs=0 (items 12, 13)

def test_train_epochs_zero_is_refused(monkeypatch, capsys, mnist_dir, tmp_path, no_work):
    out = tmp_path / "m.safetensors"
    args = _train_args(mnist_dir, out)
    args[args.index("--epochs") + 1] = "0"
    code, out_text, err = cli(monkeypatch, capsys, *args)
    assert "--epochs must be at least 1" in one_error(code, err)
    assert not out.exists() and "saved" not in out_text


def test_train_nan_lr_is_not_a_number(monkeypatch, capsys, mnist_dir, tmp_path, no_work):
    code, _, err = cli(monkeypatch, capsys, *_train_args(mnist_dir, tmp_path / "m.safetensors", "--lr", "nan"))
    line = one_error(code, err)
    assert "lr: is not a number" in line and "less than" not in line


def test_train_diverging_sgd_is_an_error_and_saves_nothing(monkeypatch, capsys, mnist_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    args = _train_args(mnist_dir, out, "--optimizer", "sgd", "--lr", "10", "--schedule", "constant")
    args[args.index("--epochs") + 1] = "3"
    code, out_text, err = cli(monkeypatch, capsys, *args)
    line = one_error(code, err)
    assert "training diverged" in line and "no checkpoint was written" in line and "lr=10 with sgd" in line
    assert "saved" not in out_text
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_train_diverging_end_to_end_subprocess(mnist_dir, tmp_path):
    """The reported command itself (a real process): exit 2, one line, no traceback, no checkpoint."""
    out = tmp_path / "m.safetensors"
    args = _train_args(mnist_dir, out, "--optimizer", "sgd", "--lr", "10")
    args[args.index("--epochs") + 1] = "3"
    proc = subprocess.run([sys.executable, "-m", "robustprune", *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "ROBUSTPRUNE_DEVICE": "cpu", "HOME": "/tmp",
                               "PYTHONPATH": ":".join(sys.path)})
    assert "diverged" in one_error(proc.returncode, proc.stderr)
    assert "saved" not in proc.stdout and not out.exists()


# ------------------------------------------------------------------------------------- smaller ones (item 14)

def test_ctrl_c_exits_130_with_one_line_and_keeps_earlier_output(monkeypatch, capsys, mnist_dir, checkpoint):
    import robustprune.train as train

    before = checkpoint.read_bytes()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted)
    code, _, err = cli(monkeypatch, capsys, *_train_args(mnist_dir, checkpoint))
    assert code == 130
    assert err.strip() == "interrupted; finished work is kept"
    assert checkpoint.read_bytes() == before  # the checkpoint written earlier is untouched


def test_huge_limits_are_clamped_and_said_once(monkeypatch, capsys, mnist_dir, checkpoint, tmp_path):
    code, out, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--data-dir", str(mnist_dir),
                         "--n", "100000", "--no-checks", "--attack", "pgd:eps=0.1,steps=1", "-q")
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert warn == [f"warning: --n 100000 is more than the {N_TEST} test images of mnist; evaluating all {N_TEST}"]
    assert f"(n={N_TEST}," in out
    code, out, err = cli(monkeypatch, capsys, *_train_args(mnist_dir, tmp_path / "m.safetensors",
                                                          "--train-limit", "1000000000"))
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "train_limit=1000000000 is more than the 300 training images" in warn[0], err


def test_load_splits_warns_when_a_limit_exceeds_the_data(mnist_dir):
    from robustprune.data import load_splits
    from robustprune.errors import RobustPruneWarning

    with pytest.warns(RobustPruneWarning, match="test_limit=999 is more than the 60 test images"):
        s = load_splits("mnist", data_dir=mnist_dir, val_size=100, test_limit=999)
    assert len(s.test) == N_TEST


# ------------------------------------------------------------------------------- progress, CLI consistency

def test_evaluate_prints_its_plan_first(monkeypatch, capsys, mnist_dir, checkpoint):
    code, out, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--data-dir", str(mnist_dir),
                         "--n", "20", "--check-n", "10", "--attack", "pgd:eps=0.05;0.1,steps=2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("plan: 20 test point(s) of mnist")
    plan = "\n".join(lines[:5])
    assert "pgd: eps 0.05, 0.1" in plan and "steps=2" in plan and "sanity checks on the first 10" in plan
    assert lines.index(next(ln for ln in lines if ln.startswith("clean"))) > 1
    code, out, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--data-dir", str(mnist_dir),
                         "--n", "20", "--no-checks", "--attack", "pgd:eps=0.1,steps=1", "--quiet")
    assert code == 0 and "plan:" not in out


def test_evaluate_interrupted_keeps_every_finished_attack_budget(monkeypatch, capsys, mnist_dir, checkpoint,
                                                                   tmp_path):
    """Ctrl-C during the third (attack, eps) run: the clean row and the two finished budgets are in the JSON
    (marked incomplete) and the database, exactly as a full run stores them; the message says so."""
    import robustprune.evaluation.run as run_mod
    from robustprune.study import ResultsStore

    args = ["evaluate", str(checkpoint), "--data-dir", str(mnist_dir), "--n", "20", "--no-checks", "-q",
            "--attack", "pgd:eps=0.05;0.1;0.2,steps=2"]
    full_json, full_db = tmp_path / "full.json", tmp_path / "full.sqlite"
    code, _, err = cli(monkeypatch, capsys, *args, "--json", str(full_json), "--db", str(full_db))
    assert code == 0, err
    real, calls = run_mod._attack_subset, []

    def interrupt_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "_attack_subset", interrupt_third)
    part_json, part_db = tmp_path / "part.json", tmp_path / "part.sqlite"
    code, out, err = cli(monkeypatch, capsys, *args, "--json", str(part_json), "--db", str(part_db))
    assert code == 130
    assert err.strip() == (f"interrupted; the clean accuracy and 2 finished (attack, eps) result(s) are in "
                           f"{part_json} and {part_db} (the JSON says \"complete\": false); rerun the same command "
                           "for all of them")
    part, full = json.loads(part_json.read_text()), json.loads(full_json.read_text())
    assert part["complete"] is False and full["complete"] is True
    assert part["clean_acc"] == full["clean_acc"]
    assert [(r["eps_str"], r["robust_acc"]) for r in part["robust"]] == \
        [(r["eps_str"], r["robust_acc"]) for r in full["robust"][:2]]
    with ResultsStore(part_db) as a, ResultsStore(full_db) as b:
        got = {(r["attack"], r["eps_str"]): r["robust_acc"] for r in a.results()}
        want = {(r["attack"], r["eps_str"]): r["robust_acc"] for r in b.results()}
    assert len(got) == 3 and got == {k: v for k, v in want.items() if k[1] != "0.2"}
    monkeypatch.setattr(run_mod, "_attack_subset", real)  # no output asked for: the message says nothing is kept
    calls.clear()
    monkeypatch.setattr(run_mod, "_attack_subset", interrupt_third)
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 130 and "nothing was written (no --json or --db given)" in err


def test_version(monkeypatch, capsys):
    import robustprune

    code, out, _ = cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith(f"robustprune {robustprune.__version__}")


def test_every_option_has_help_and_every_command_takes_quiet():
    import typer

    from robustprune.cli.main import app

    group = typer.main.get_command(app)
    commands = {}  # a command group (`data`) counts by its subcommands (`data fetch`)
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        commands.update({f"{name} {s}": c for s, c in subs.items()} if subs else {name: cmd})
    assert "data fetch" in commands and "study" in commands
    missing = [f"{name} {p.name}" for name, cmd in commands.items() for p in cmd.params
               if not getattr(p, "help", None)]
    assert missing == []
    no_quiet = [name for name, cmd in commands.items() if name != "list"
                and "--quiet" not in [o for p in cmd.params for o in getattr(p, "opts", [])]]
    assert no_quiet == []
    schedule = next(p for p in group.commands["train"].params if p.name == "schedule")
    assert "learning-rate" in schedule.help.lower()


def test_missing_extra_message_works_from_a_clone_and_from_the_index():
    from robustprune.utils import install_hint

    hint = install_hint("autoattack")
    assert 'pip install -e ".[autoattack]"' in hint and "pip install 'robustprune[autoattack]'" in hint


def test_evaluate_attack_without_budget_is_refused_before_work(monkeypatch, capsys, mnist_dir, checkpoint,
                                                                no_work):
    for quiet in ([], ["-q"]):
        code, _, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--data-dir", str(mnist_dir),
                           "--attack", "l0:steps=2", *quiet)
        assert "needs budgets" in one_error(code, err)


def test_evaluate_refuses_a_checkpoint_with_nan_weights(monkeypatch, capsys, mnist_dir, checkpoint, tmp_path):
    import torch

    from robustprune.checkpoint import load_checkpoint, save_checkpoint

    model, meta, masks = load_checkpoint(checkpoint, "cpu")
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_checkpoint(bad, model, meta=meta, masks=masks)
    db = tmp_path / "r.sqlite"
    code, out, err = cli(monkeypatch, capsys, "evaluate", str(bad), "--data-dir", str(mnist_dir), "--n", "10",
                         "--no-checks", "--db", str(db))
    assert "NaN" in one_error(code, err)  # refused at load (checkpoint.py) or by the CLI before any work
    assert not db.exists() and "%" not in out  # no number printed, no row stored
    code, out, err = cli(monkeypatch, capsys, "evaluate", str(checkpoint), "--data-dir", str(mnist_dir), "--n", "10",
                         "--no-checks", "--transfer-from", str(bad))
    assert str(bad) in one_error(code, err)


# ------------------------------------------------------------------- options a method does not use are said

def test_prune_says_which_generic_options_the_method_does_not_use(monkeypatch, capsys, mnist_dir, checkpoint,
                                                                  tmp_path):
    """--epochs when every phase of the method has its own epochs, --eps for a method that trains on clean data:
    a named warning each (the run goes on with what the method uses)."""
    ran = []

    def no_prune(self, model, task, rates, settings=None):  # the warnings come before any work
        ran.append(task.epochs)
        return iter(())

    from robustprune.methods import get_method

    for name in ("admm-irregular", "pwoa-irregular", "magnitude-unstructured-global"):
        monkeypatch.setattr(type(get_method(name)), "prune_many", no_prune)
    base = ["prune", str(checkpoint), "--data-dir", str(mnist_dir), "--out", str(tmp_path), "-q"]
    code, _, err = cli(monkeypatch, capsys, *base, "--method", "admm-irregular", "--epochs", "3",
                       "--set", "admm.epochs=2", "--set", "retrain.epochs=1")
    assert code == 0, err
    assert ("warning: --epochs 3 is not used by admm-irregular: every phase has its own (admm.epochs=2, "
            "retrain.epochs=1); set those instead (--set admm.epochs=N)") in err
    code, _, err = cli(monkeypatch, capsys, *base, "--method", "admm-irregular", "--set", "admm.epochs=2")
    assert code == 0 and "not used" not in err  # retrain takes --epochs: nothing to say
    code, _, err = cli(monkeypatch, capsys, *base, "--method", "pwoa-irregular", "--eps", "0.2")
    assert code == 0 and "warning: --eps 0.2 does not change how pwoa-irregular trains" in err
    code, _, err = cli(monkeypatch, capsys, *base, "--method", "pwoa-irregular", "--eps", "0.2",
                       "--set", "mix_ratio=0.5")
    assert code == 0 and "--eps" not in err  # mixed-in PGD examples at that budget: used
    code, _, err = cli(monkeypatch, capsys, *base, "--method", "magnitude-unstructured-global", "--eps", "0.2")
    assert code == 0 and "warning" not in err


def test_a_fractional_phase_budget_becomes_whole_epochs_of_capped_steps():
    from robustprune.errors import ConfigError
    from robustprune.methods import get_method
    from robustprune.methods.interface import _epochs_and_steps

    assert _epochs_and_steps(0.5, 1000, 100) == (1, 5)  # 10 steps an epoch: half of them
    assert _epochs_and_steps(2.5, 1000, 100) == (3, 9)  # 25 steps over 3 epochs: ceil(25/3) each
    assert _epochs_and_steps(3, 1000, 100) == (3, None)  # whole epochs: no cap
    assert _epochs_and_steps(0, 1000, 100) == (0, None)  # 0: the phase is skipped on purpose
    with pytest.raises(ConfigError, match=r"0.01 epoch\(s\) of 1000 images in batches of 100 is 0.1 gradient steps, "
                                          r"which rounds to 0: the phase would not train; give at least 0.1 epochs"):
        _epochs_and_steps(0.01, 1000, 100)
    assert _epochs_and_steps(0.01, 1000, 100, at_least_one_step=True) == (1, 1)  # a derived part: one step
    m = get_method("admm-irregular")
    with pytest.raises(ConfigError, match=r"admm-irregular, phase 'admm' \(--set admm.epochs=N"):
        m.check_budget(m.settings({"admm.epochs": 0.001}), epochs=1, n_train=1000)
    with pytest.raises(ConfigError, match=r"admm-irregular, phase 'admm' \(--epochs / prune_epochs\)"):
        m.check_budget(m.settings({}), epochs=0.05, n_train=1000)  # admm takes the task's epochs: 0.4 steps
    m.check_budget(m.settings({}), epochs=0.5, n_train=1000)  # 4 steps: fine


def test_an_unused_option_is_kept_in_the_sidecar(monkeypatch, capsys, mnist_dir, checkpoint, tmp_path):
    """The warning is not only printed: the pruned checkpoint's sidecar records what the method did not use."""
    import json

    code, _, err = cli(monkeypatch, capsys, "prune", str(checkpoint), "--data-dir", str(mnist_dir), "--out",
                       str(tmp_path), "-q", "--method", "pwoa-irregular", "--rate", "2", "--eps", "0.2",
                       "--train-limit", "64", "--set", "admm.epochs=1", "--set", "retrain.epochs=1",
                       "--set", "admm.batch_size=64", "--set", "retrain.batch_size=64")
    assert code == 0, err
    side = json.loads((tmp_path / f"{checkpoint.stem}-pwoa-irregular-c2.json").read_text())
    unused = side["config"]["unused_options"]
    assert len(unused) == 1 and unused[0].startswith("--eps 0.2 does not change how pwoa-irregular trains")
    assert side["config"]["val_size"] == 100  # the parent's validation split, not the command's default
