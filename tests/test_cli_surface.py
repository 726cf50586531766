"""The whole CLI surface against bad values, table-driven: every option of every command has a list of bad values
and each must end in exit status 2, exactly one ``error:`` line naming the option, no traceback, and no work
started (training, evaluation, export and study runs are replaced by a tripwire). The options are read from the
commands themselves, so a new option without bad-value cases fails ``test_every_option_has_bad_value_cases``.
Flags (``--quiet``, ``--compile`` ...) take no value and are exempt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from conftest import cli, run_main, write_learnable_mnist

#: (command, option name) -> bad values. A value is given as the option's text, exactly as a user would type it.
BAD: dict[tuple[str, str], list[str]] = {
    # ------------------------------------------------------------------------------------------- list
    ("list", "what"): ["no-such-thing"],
    ("list", "settings"): ["no-such-method"],
    # ------------------------------------------------------------------------------------------- train
    ("train", "dataset"): ["no-such-dataset"],
    ("train", "arch"): ["no-such-arch"],
    ("train", "width"): ["0", "-1", "abc", "nan", "inf"],
    ("train", "objective"): ["no-such-objective", "pgd-at:eps=abc", "pgd-at:steps=0", "pgd-at:eps=2"],
    ("train", "epochs"): ["0", "-1", "abc", "nan", "inf"],
    ("train", "batch_size"): ["0", "-3", "abc", "2.5"],
    ("train", "optimizer"): ["adamw2"],
    ("train", "lr"): ["0", "-0.1", "abc", "nan", "inf"],
    ("train", "weight_decay"): ["-1", "abc", "nan"],
    ("train", "schedule"): ["sometimes"],
    ("train", "seed"): ["-1", "abc"],
    ("train", "train_limit"): ["0", "-5", "abc"],
    ("train", "val_size"): ["-1", "abc"],
    ("train", "out"): ["/proc/x/model.safetensors"],
    ("train", "precision"): ["fp16"],
    ("train", "data_dir"): ["/no/such/dir"],
    ("train", "device"): ["banana", "cuda:x"],
    # ------------------------------------------------------------------------------------------- prune
    ("prune", "checkpoint"): ["/no/such/model.safetensors", "{corrupt}"],
    ("prune", "method"): ["no-such-method"],
    ("prune", "rate"): ["0", "0.5", "-2", "abc", "nan", "inf"],
    ("prune", "sparsity"): ["1", "1.5", "-0.1", "abc", "nan"],
    ("prune", "epochs"): ["-1", "abc", "nan", "inf", "0.001"],
    ("prune", "train_limit"): ["0", "-5", "abc"],
    ("prune", "set_"): ["no_such_setting=1", "finetune.lr=-1", "schedule", "finetune.epochs=abc"],
    ("prune", "objective"): ["no-such-objective", "pgd-at:eps=abc"],
    ("prune", "eps"): ["abc", "0", "-0.1", "2", "nan"],
    ("prune", "model_factory"): ["no.such.module:factory", "robustprune:no_such_factory"],
    ("prune", "seed"): ["-1", "abc"],
    ("prune", "out"): ["/proc/x"],
    ("prune", "precision"): ["fp16"],
    ("prune", "data_dir"): ["/no/such/dir"],
    ("prune", "device"): ["banana"],
    # ---------------------------------------------------------------------------------------- evaluate
    ("evaluate", "checkpoint"): ["/no/such/model.safetensors", "{corrupt}"],
    ("evaluate", "attack"): ["no-such-attack", "apgd-t:eps=0.1,n_target_classes=0", "apgd:eps=0.1,early_exit=maybe",
                             "pgd:eps=abc", "pgd:eps=0.1,steps=0", "pgd-l2:eps=50"],
    ("evaluate", "n"): ["0", "-1", "abc"],
    ("evaluate", "batch_size"): ["0", "-5", "abc"],
    ("evaluate", "seed"): ["-1", "abc"],
    ("evaluate", "db"): ["/proc/x/r.sqlite"],
    ("evaluate", "json_out"): ["/proc/x/e.json"],
    ("evaluate", "transfer_from"): ["/no/such/base.safetensors"],
    ("evaluate", "check_n"): ["0", "-1", "abc"],
    ("evaluate", "model_factory"): ["no.such.module:factory"],
    ("evaluate", "data_dir"): ["/no/such/dir"],
    ("evaluate", "device"): ["banana"],
    # ------------------------------------------------------------------------------------------- study
    ("study", "spec_file"): ["/no/such/study.yaml", "{corrupt-yaml}"],
    ("study", "out"): ["/proc/x"],
    ("study", "precision"): ["fp16"],
    ("study", "data_dir"): ["/no/such/dir"],
    ("study", "device"): ["banana"],
    ("study", "ray_address"): ["not-an-address"],
    # ------------------------------------------------------------------------------------------ export
    ("export", "checkpoint"): ["/no/such/model.safetensors", "{corrupt}"],
    ("export", "format_"): ["no-such-format"],
    ("export", "out"): ["/proc/x/m.onnx"],
    ("export", "n"): ["0", "-1", "abc"],
    ("export", "eps"): ["abc", "0", "2"],
    ("export", "attack_steps"): ["0", "-1", "abc"],
    ("export", "base"): ["/no/such/base.safetensors"],
    ("export", "model_factory"): ["no.such.module:factory"],
    ("export", "seed"): ["-1", "abc"],
    ("export", "data_dir"): ["/no/such/dir"],
    # ------------------------------------------------------------------------------------------ report
    ("report", "out"): ["/no/such/study"],
    ("report", "export"): ["no-such-format"],
    ("report", "data_dir"): ["/no/such/dir"],
    # ------------------------------------------------------------------------------------------ import
    ("import", "weights"): ["/no/such/weights.pt", "{corrupt}", "{ckpt-json}"],
    ("import", "dataset"): ["no-such-dataset"],
    ("import", "out"): ["/proc/x/m.safetensors", "m.pt"],
    ("import", "arch"): ["no-such-arch"],
    ("import", "model_factory"): ["no.such.module:factory"],
    ("import", "width"): ["0", "-1", "abc", "nan", "inf"],
    ("import", "mean"): ["abc", "nan", "0.1,0.2"],
    ("import", "std"): ["0", "-1", "abc"],
    ("import", "container"): ["no-such-key"],
    ("import", "key_map"): ["no-such-map"],
    ("import", "n_check"): ["0", "-1", "abc"],
    ("import", "n_attack"): ["-1", "abc"],
    ("import", "attack_steps"): ["0", "-1", "abc"],
    ("import", "eps"): ["abc", "0", "2"],
    ("import", "val_size"): ["0", "-1", "abc"],
    ("import", "seed"): ["-1", "abc"],
    ("import", "data_dir"): ["/no/such/dir"],
    ("import", "device"): ["banana"],
}

#: Options whose bad values need a real run to be refused (checked elsewhere), with the reason.
ELSEWHERE: dict[tuple[str, str], str] = {}


def _commands() -> dict[str, object]:
    from robustprune.cli.main import app

    return typer.main.get_command(app).commands


def _value_params(command) -> list:
    return [p for p in command.params if not getattr(p, "is_flag", False) and p.name not in ("help",)]


def test_every_option_has_bad_value_cases():
    missing = []
    for name, command in _commands().items():
        for p in _value_params(command):
            if (name, p.name) not in BAD and (name, p.name) not in ELSEWHERE:
                missing.append(f"{name} {'/'.join(p.opts)}")
    assert not missing, "options without bad-value cases in tests/test_cli_surface.py BAD: " + ", ".join(missing)
    stale = [k for k in BAD if k[0] not in _commands() or k[1] not in {p.name for p in _commands()[k[0]].params}]
    assert not stale, f"BAD names options that no longer exist: {stale}"


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Synthetic MNIST, a trained checkpoint, a corrupt file, a tiny study file and its finished output."""
    root = tmp_path_factory.mktemp("surface")
    (root / "mnist").mkdir()
    data = write_learnable_mnist(root / "mnist", n_test=40)
    ckpt = root / "base.safetensors"
    run_main("train", "--dataset", "mnist", "--data-dir", str(data), "--val-size", "100", "--objective", "natural",
             "--epochs", "1", "--out", str(ckpt), "-q")
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    corrupt_yaml = root / "corrupt.yaml"
    corrupt_yaml.write_text("name: [unclosed\n  methods: {")
    spec = root / "study.yaml"
    spec.write_text(f"name: surface\ndatasets: [mnist]\ndata_dir: {data}\narchitectures: [lenet5-caffe]\n"
                    "seeds: [0]\ntrain_limit: 200\nval_size: 100\neval_n: 20\nbase_objective: {name: natural}\n"
                    "base_train: {epochs: 1}\nmethods: [magnitude-unstructured-global]\ncompression: [1, 2]\n"
                    "finetune_objective: {name: natural}\nfinetune_limit: 100\n"
                    "attacks: [{name: pgd, eps: [0.1], steps: 2}]\ntransfer: false\nvulnerability: false\n")
    study_out = root / "study-out"
    run_main("study", str(spec), "--out", str(study_out), "-q")
    return {"data": data, "ckpt": ckpt, "corrupt": corrupt, "corrupt_yaml": corrupt_yaml, "spec": spec,
            "study_out": study_out, "root": root}


def _baseline(command: str, env: dict[str, Path], tmp: Path) -> list[tuple[str, str | None]]:
    """A valid invocation as (option, value) pairs (value None: a positional argument or a flag)."""
    d, c = str(env["data"]), str(env["ckpt"])
    return {
        "list": [("what", "methods")],
        "train": [("--dataset", "mnist"), ("--data-dir", d), ("--val-size", "100"), ("--objective", "natural"),
                  ("--epochs", "1"), ("--train-limit", "200"), ("--out", str(tmp / "m.safetensors")), ("-q", None)],
        "prune": [("checkpoint", c), ("--method", "magnitude-unstructured-global"), ("--rate", "2"),
                  ("--epochs", "1"), ("--train-limit", "100"), ("--data-dir", d), ("--out", str(tmp / "p")),
                  ("-q", None)],
        "evaluate": [("checkpoint", c), ("--data-dir", d), ("--n", "20"), ("--attack", "pgd:eps=0.1,steps=2"),
                     ("-q", None)],
        "study": [("spec_file", str(env["spec"])), ("--out", str(tmp / "s")), ("-q", None)],
        "export": [("checkpoint", c), ("--format", "torchscript"), ("--out", str(tmp / "m.pt")), ("--data-dir", d),
                   ("--n", "20"), ("-q", None)],
        "report": [("out", str(env["study_out"])), ("-q", None)],
        "import": [("weights", c), ("--arch", "lenet5-caffe"), ("--dataset", "mnist"), ("--data-dir", d),
                   ("--val-size", "100"), ("--n-check", "20"), ("--n-attack", "5"), ("--attack-steps", "2"),
                   ("--out", str(tmp / "i.safetensors")), ("-q", None)],
    }[command]


def _argv(command: str, option, value: str, env: dict[str, Path], tmp: Path) -> list[str]:
    value = {"{corrupt}": str(env["corrupt"]), "{corrupt-yaml}": str(env["corrupt_yaml"]),
             "{ckpt-json}": str(env["ckpt"].with_suffix(".json"))}.get(value, value)
    flag = option.opts[0]
    positional = not flag.startswith("-")
    out, replaced = [command], False
    for opt, val in _baseline(command, env, tmp):
        is_positional = not opt.startswith("-")
        if (positional and is_positional and opt == option.name) or opt in option.opts:
            out += [value] if positional else [flag, value]
            replaced = True
        elif is_positional:
            out.append(val)
        else:
            out += [opt] + ([val] if val is not None else [])
    if not replaced:
        out += [value] if positional else [flag, value]
    return out


@pytest.fixture
def tripwire(monkeypatch):
    """Any training, evaluation, export or study run means a bad value was accepted."""
    import robustprune.deploy as deploy
    import robustprune.evaluation as evaluation
    import robustprune.methods  # noqa: F401  (before the patch: modules binding `fit` on import must not keep it)
    import robustprune.study as study
    import robustprune.train as train
    from robustprune.methods.interface import PruningMethod

    class WorkStarted(AssertionError):
        pass

    def boom(*a, **k):
        raise WorkStarted("work started with a bad value")

    monkeypatch.setattr(train, "fit", boom)
    monkeypatch.setattr(evaluation, "evaluate_model", boom)
    monkeypatch.setattr(deploy, "export", boom)
    monkeypatch.setattr(study, "run_study", boom)
    monkeypatch.setattr(PruningMethod, "prune", boom)


CASES = [(cmd, opt, bad) for (cmd, opt), values in BAD.items() for bad in values]


@pytest.mark.parametrize("command,option,bad", CASES, ids=[f"{c}-{o}={b}" for c, o, b in CASES])
def test_a_bad_value_is_one_line_and_exit_2(command, option, bad, env, tmp_path, monkeypatch, capsys, tripwire):
    params = {p.name: p for p in _commands()[command].params}
    argv = _argv(command, params[option], bad, env, tmp_path)
    code, _out, err = cli(monkeypatch, capsys, *argv)
    assert "Traceback" not in err, f"{' '.join(argv)}: traceback\n{err}"
    errors = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1, f"{' '.join(argv)}: exit {code}\n{err}"
    # The line is about this value, not an error met on the way (a refused default elsewhere would pass unseen).
    flag = params[option].opts[0] if params[option].opts else option
    if params[option].param_type_name == "argument":  # a file symbol becomes its path
        given = argv[1]
    else:
        given = argv[argv.index(flag) + 1] if flag in argv else bad
    keys = {kv.split("=")[0] for kv in bad.split(":", 1)[-1].split(",")}  # NAME:key=value,... names the key
    named = {bad, given, *keys, flag, flag.lstrip("-"), flag.lstrip("-").split("-")[0], option}
    assert any(t and t in errors[0] for t in named), f"{' '.join(argv)}: the error does not name it: {errors[0]}"
