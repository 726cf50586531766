"""The whole CLI surface against bad values, table-driven: every option of every command has a list of bad values
and each must end in exit status 2, exactly one ``error:`` line naming the option, no traceback, and no work
started (training, evaluation, export and study runs are replaced by a tripwire). The options are read from the
commands themselves, so a new option without bad-value cases fails ``test_every_option_has_bad_value_cases``.
Flags (``--quiet``, ``--compile`` ...) take no value and are exempt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import typer
import yaml
from torch import nn

from conftest import WorkStarted, cli, run_main, write_learnable_mnist

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
    ("prune", "checkpoint"): ["/no/such/model.safetensors", "{corrupt}", "{folder}", "{ghost-mask}", "{no-dataset}"],
    ("prune", "method"): ["no-such-method"],
    ("prune", "rate"): ["0", "0.5", "-2", "abc", "nan", "inf", "1", "1e7"],
    ("prune", "sparsity"): ["1", "1.5", "-0.1", "abc", "nan", "0"],
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
    ("evaluate", "checkpoint"): ["/no/such/model.safetensors", "{corrupt}", "{folder}", "{ghost-mask}",
                                 "{no-dataset}"],
    ("evaluate", "attack"): ["no-such-attack", "apgd-t:eps=0.1,n_target_classes=0", "apgd:eps=0.1,early_exit=maybe",
                             "pgd:eps=abc", "pgd:eps=0.1,steps=0", "pgd-l2:eps=50", "pgd:eps=0.05,0.1",
                             "min-norm-linf:eps_max=5", "apgd:eps=0.1,n_target_classes=20"],
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
    ("study", "spec_file"): ["/no/such/study.yaml", "{corrupt-yaml}", "{folder}", "{spec-milestones}",
                             "{spec-group-rates}", "{spec-apgd-20}", "{spec-rate-1e7}"],
    ("study", "out"): ["/proc/x"],
    ("study", "precision"): ["fp16"],
    ("study", "data_dir"): ["/no/such/dir"],
    ("study", "device"): ["banana"],
    ("study", "ray_address"): ["not-an-address"],
    ("study", "cpus_per_task"): ["0", "-1", "abc", "nan"],
    ("study", "gpus_per_task"): ["-1", "abc", "nan"],
    ("study", "workers"): ["0", "-1", "abc"],
    ("study", "storage"): ["/proc/x"],
    # ------------------------------------------------------------------------------------------ export
    ("export", "checkpoint"): ["/no/such/model.safetensors", "{corrupt}", "{folder}", "{ghost-mask}",
                               "{hydra-1000}", "{no-dataset}"],
    ("export", "format_"): ["no-such-format"],
    ("export", "out"): ["/proc/x/m.onnx"],
    ("export", "n"): ["0", "-1", "abc"],
    ("export", "eps"): ["abc", "0", "2"],
    ("export", "attack_steps"): ["0", "-1", "abc"],
    ("export", "base"): ["/no/such/base.safetensors", "{cnn5}", "{self}"],
    ("export", "model_factory"): ["no.such.module:factory"],
    ("export", "seed"): ["-1", "abc"],
    ("export", "data_dir"): ["/no/such/dir"],
    # ------------------------------------------------------------------------------------------ report
    ("report", "out"): ["/no/such/study", "{self}"],
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

#: Rows of issue 30 whose old message named the value but left the user guessing: what the line must also say.
EXPECT: dict[tuple[str, str, str], str] = {
    ("prune", "sparsity", "0"): "--sparsity 0 (compression rate 1)",
    ("prune", "rate", "1e7"): "--rate 1e+07: compression rate 1e+07 would leave less than one",
    ("prune", "checkpoint", "{folder}"): "is a folder",
    ("evaluate", "checkpoint", "{folder}"): "is a folder",
    ("export", "checkpoint", "{folder}"): "is a folder",
    ("study", "spec_file", "{folder}"): "is a folder",
    ("report", "out", "{self}"): "is a checkpoint (evaluate it",
    ("evaluate", "attack", "pgd:eps=0.05,0.1"): "several budgets are separated by ';'",
    ("evaluate", "attack", "min-norm-linf:eps_max=5"): "eps_max=5",
    ("prune", "checkpoint", "{no-dataset}"): "names no dataset (dataset: null)",
    ("evaluate", "checkpoint", "{no-dataset}"): "names no dataset (dataset: null)",
    ("export", "checkpoint", "{no-dataset}"): "names no dataset (dataset: null)",
    ("prune", "checkpoint", "{ghost-mask}"): "names a mask for 'ghost_layer' that the file does not hold",
    ("evaluate", "checkpoint", "{ghost-mask}"): "names a mask for 'ghost_layer' that the file does not hold",
    ("export", "checkpoint", "{ghost-mask}"): "names a mask for 'ghost_layer' that the file does not hold",
    ("export", "checkpoint", "{hydra-1000}"): "claims hydra at compression rate 1000",
    ("export", "base", "{cnn5}"): "not its base",
    ("export", "base", "{self}"): "is the checkpoint itself",
    ("study", "spec_file", "{spec-milestones}"): "milestones",
    ("study", "spec_file", "{spec-group-rates}"): "group_rates of unstructured",
    ("study", "spec_file", "{spec-apgd-20}"): "n_target_classes=20",
    ("study", "spec_file", "{spec-rate-1e7}"): "compression: magnitude-unstructured-global",
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

def _save_like(path: Path, model, meta: dict, masks=None) -> Path:
    from robustprune.checkpoint import save_checkpoint

    return save_checkpoint(path, model, meta=meta, masks=masks)


def _edit(side: Path, **changes) -> None:
    meta = json.loads(side.read_text())
    for key, value in changes.items():
        if key.startswith("config."):
            meta.setdefault("config", {})[key.split(".", 1)[1]] = value
        else:
            meta[key] = value
    side.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Synthetic MNIST, a trained checkpoint, a corrupt file, a tiny study file and its finished output, and the
    files of issue 30's cases (a cnn5 checkpoint, a pruned one whose sidecar names a mask the file lacks, one whose
    sidecar claims hydra at c = 1000, one whose sidecar names no dataset, study files that fail only mid-study).
    Every set-up step asserts its own success."""
    from robustprune.checkpoint import load_checkpoint
    from robustprune.models import create_model
    from robustprune.provenance import file_sha256
    from robustprune.sparsity import compute_masks

    root = tmp_path_factory.mktemp("surface")
    (root / "mnist").mkdir()
    data = write_learnable_mnist(root / "mnist", n_test=40)
    ckpt = root / "base.safetensors"
    code = run_main("train", "--dataset", "mnist", "--data-dir", str(data), "--val-size", "100", "--objective",
                    "natural", "--epochs", "1", "--out", str(ckpt), "-q")
    assert code == 0 and ckpt.is_file() and ckpt.with_suffix(".json").is_file(), f"set-up train: exit {code}"
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    corrupt_yaml = root / "corrupt.yaml"
    corrupt_yaml.write_text("name: [unclosed\n  methods: {")
    spec_text = (f"name: surface\ndatasets: [mnist]\ndata_dir: {data}\narchitectures: [lenet5-caffe]\n"
                 "seeds: [0]\ntrain_limit: 200\nval_size: 100\neval_n: 20\nbase_objective: {name: natural}\n"
                 "base_train: {epochs: 1}\nmethods: [magnitude-unstructured-global]\ncompression: [1, 2]\n"
                 "finetune_objective: {name: natural}\nfinetune_limit: 100\n"
                 "attacks: [{name: pgd, eps: [0.1], steps: 2}]\ntransfer: false\nvulnerability: false\n")
    spec = root / "study.yaml"
    spec.write_text(spec_text)
    study_out = root / "study-out"
    code = run_main("study", str(spec), "--out", str(study_out), "-q")
    assert code == 0 and (study_out / "results.sqlite").is_file(), f"set-up study: exit {code}"
    bad_specs = {
        "spec-milestones": spec_text.replace("methods: [magnitude-unstructured-global]",
                                             "methods: [flyingbird]\nmethod_settings: {flyingbird: "
                                             "{milestones: [2.0]}}"),
        "spec-group-rates": spec_text + "group_rates: {unstructured: [2, 1.0e7]}\n",
        "spec-apgd-20": spec_text.replace("attacks: [{name: pgd, eps: [0.1], steps: 2}]",
                                          "attacks: [{name: apgd, eps: [0.1], n_target_classes: 20}]"),
        "spec-rate-1e7": spec_text.replace("compression: [1, 2]", "compression: [1, 1.0e7]"),
    }
    files = {"data": data, "ckpt": ckpt, "corrupt": corrupt, "corrupt_yaml": corrupt_yaml, "spec": spec,
             "study_out": study_out, "root": root}
    for key, text in bad_specs.items():
        files[key] = root / f"{key}.yaml"
        files[key].write_text(text)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    shape = {k: meta[k] for k in ("dataset", "num_classes", "input_shape", "mean", "std")}
    torch.manual_seed(0)
    files["cnn5"] = _save_like(root / "cnn5.safetensors", create_model("cnn5", num_classes=10, in_channels=1,
                                                                      input_size=28),
                               {"architecture": "cnn5", **shape})
    model, _m, _ = load_checkpoint(ckpt)
    masks = compute_masks(model, group="unstructured", score="magnitude", scope="global", keep=0.25)
    masks.apply(model)
    pruned_meta = {**meta, "config": {"parent": str(ckpt), "parent_sha256": file_sha256(ckpt),
                                      "method": "magnitude-unstructured-global", "rate": 4.0, "rate_kind": "set",
                                      "group": "unstructured", "settings": {}},
                   "achieved_compression": 4.0}
    for k in ("sha256", "masks", "weights_file", "format"):
        pruned_meta.pop(k, None)
    for key, edit in (("ghost-mask", {"masks": [*masks.names(), "ghost_layer"]}),
                      ("hydra-1000", {"config.method": "hydra", "config.rate": 1000})):
        files[key] = _save_like(root / f"{key}.safetensors", model, pruned_meta, masks=masks)
        _edit(files[key].with_suffix(".json"), **edit)
    base_model, _m, _ = load_checkpoint(ckpt)  # the unpruned base whose sidecar names no dataset
    files["no-dataset"] = _save_like(root / "no-dataset.safetensors", base_model,
                                     {k: v for k, v in meta.items() if k not in ("sha256", "masks", "weights_file",
                                                                                 "format")})
    _edit(files["no-dataset"].with_suffix(".json"), dataset=None)
    return files


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


def _value(value: str, command: str, env: dict[str, Path]) -> str:
    """A row's value with its {file} symbol replaced by the fixture's path ({self}: the command's own input)."""
    if not (value.startswith("{") and value.endswith("}")):
        return value
    key = value[1:-1]
    special = {"corrupt-yaml": env["corrupt_yaml"], "ckpt-json": env["ckpt"].with_suffix(".json"),
               "folder": env["root"], "self": env["ckpt"]}
    return str(special.get(key, env.get(key)))


def _argv(command: str, option, value: str, env: dict[str, Path], tmp: Path) -> list[str]:
    value = _value(value, command, env)
    flag = option.opts[0]
    positional = not flag.startswith("-")
    out, replaced = [command], False
    for opt, val in _baseline(command, env, tmp):
        if command == "prune" and option.name == "sparsity" and opt == "--rate":
            continue  # a sparsity row alone (with the baseline's --rate both must agree: another error)
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
def tripwire(work_tripwire) -> list[str]:
    """The suite's one work tripwire (conftest.work_tripwire): what tripped, if anything."""
    return work_tripwire


def names_it(error: str, tokens: list[str]) -> bool:
    """The error names the option the user typed: one of ``tokens`` (the flag as typed, the full value as typed,
    a ``key`` of ``NAME:key=value``; never a token of 1-2 characters) appears as a whole word, not inside a longer
    one (``inf`` is not named by "infinite", ``0`` not by "10")."""
    for t in tokens:
        if t and len(t) >= 3 and re.search(r"(?<![\w.])" + re.escape(t) + r"(?![\w])", error):
            return True
    return False


def _cli_tokens(params: dict, option: str, bad: str, argv: list[str]) -> list[str]:
    param = params[option]
    if param.param_type_name == "argument":  # a positional: its value is the path as typed
        return [argv[1] if option != "out" or argv[0] != "report" else argv[1], bad]
    flag = param.opts[0]
    given = argv[argv.index(flag) + 1] if flag in argv else bad
    names = [param.name.rstrip("_"), param.name.rstrip("_").replace("_", "-")]  # width, batch_size, batch-size
    if ":" in bad:  # NAME:key=value,...: the NAME and each key typed
        name, rest = bad.split(":", 1)
        keys = [name] + [kv.split("=")[0] for kv in rest.split(",")]
    else:  # --set key=value: the key typed
        keys = [bad.split("=")[0]] if "=" in bad else []
    return [*param.opts, *names, given, bad, *keys]


def check_cli_row(command: str, option: str, bad: str, env, tmp_path, monkeypatch, capsys, tripped) -> None:
    params = {p.name: p for p in _commands()[command].params}
    argv = _argv(command, params[option], bad, env, tmp_path)
    code, _out, err = cli(monkeypatch, capsys, *argv)
    assert not tripped, f"{' '.join(argv)}: work started before the value was refused: {tripped}"
    assert "Traceback" not in err, f"{' '.join(argv)}: traceback\n{err}"
    errors = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1, f"{' '.join(argv)}: exit {code}\n{err}"
    # The line is about this value, not an error met on the way (a refused default elsewhere would pass unseen).
    assert names_it(errors[0], _cli_tokens(params, option, bad, argv)), \
        f"{' '.join(argv)}: the error does not name the option or the value as typed: {errors[0]}"
    want = EXPECT.get((command, option, bad))
    assert want is None or want in errors[0], f"{' '.join(argv)}: the error does not say {want!r}: {errors[0]}"


CASES = [(cmd, opt, bad) for (cmd, opt), values in BAD.items() for bad in values]


@pytest.mark.parametrize("command,option,bad", CASES, ids=[f"{c}-{o}={b}" for c, o, b in CASES])
def test_a_bad_value_is_one_line_and_exit_2(command, option, bad, env, tmp_path, monkeypatch, capsys, tripwire):
    check_cli_row(command, option, bad, env, tmp_path, monkeypatch, capsys, tripwire)


# ------------------------------------------------------------------------------------------------ controls
@pytest.mark.parametrize("command", sorted({c for c, _o in BAD} - {"list"}))
def test_the_baseline_of_every_command_trips_the_tripwire(command, env, tmp_path, monkeypatch, capsys, tripwire):
    """The control: each command's valid baseline (the invocation every row changes one value of) does work, and
    the tripwire sees it (``list`` does no work). A tripwire patched where no work passes would fail here."""
    argv = [command]
    for opt, val in _baseline(command, env, tmp_path):
        argv += [val] if not opt.startswith("-") else [opt] + ([val] if val is not None else [])
    try:
        cli(monkeypatch, capsys, *argv)
    except WorkStarted:
        pass
    assert tripwire, f"{' '.join(argv)}: the baseline ran without touching the tripwire"


@pytest.mark.parametrize("broken,row", [
    ("robustprune.rates.parse_sparsity", ("prune", "sparsity", "1.5")),
    ("robustprune.utils.check_device", ("evaluate", "device", "banana")),
])
def test_a_deliberately_broken_validation_makes_its_row_fail(broken, row, env, tmp_path, monkeypatch, capsys,
                                                            tripwire):
    """The other control: with one validation switched off (a test-only patch that accepts anything), the row that
    exercises it fails -- by a traceback, work started, or an error that names something else."""
    import importlib

    mod_name, attr = broken.rsplit(".", 1)
    mod = importlib.import_module(mod_name)
    accept = {"parse_sparsity": lambda value, **k: 0.5, "check_device": lambda requested: torch.device("cpu")}[attr]
    monkeypatch.setattr(mod, attr, accept)
    with pytest.raises(AssertionError):
        check_cli_row(*row, env, tmp_path, monkeypatch, capsys, tripwire)


def test_train_without_validation_images_says_no_accuracy_was_measured(env, tmp_path, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "train", "--dataset", "mnist", "--data-dir", str(env["data"]),
                         "--val-size", "0", "--objective", "natural", "--epochs", "1", "--train-limit", "200",
                         "--out", str(tmp_path / "v0.safetensors"), "-q")
    assert code == 0, err
    assert "validation: none (--val-size 0" in out and "0.000" not in out


# ------------------------------------------------------------------------------------------------ Python API
class _TupleNet(nn.Module):
    """A model whose forward returns (logits, features): what export and prune must refuse in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _xy(n: int = 16, c: int = 1, size: int = 28, classes: int = 10):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _lenet():
    from robustprune.models import create_model

    torch.manual_seed(0)
    return create_model("lenet5-caffe", num_classes=10, in_channels=1, input_size=28)


def _api_baseline(fn: str, tmp: Path) -> dict:
    x, y = _xy()
    if fn == "export":
        return {"model": _lenet(), "out": tmp / "m.pt", "format": "torchscript", "data": (x[:8], y[:8]), "eps": 0.1,
                "attack_steps": 2, "latency": False}
    return {"model": _lenet(), "method": "magnitude-unstructured-global", "rate": 2, "data": (x, y), "eps": 0.1,
            "epochs": 1, "schedule": "one-shot"}


def _api_value(symbol: str, base: dict):
    """Values a row gives as a symbol (they need the baseline's data)."""
    x, y = base["data"]
    y15 = y.clone()
    y15[0] = 15
    return {
        "0..255 pixels": (x * 255, y), "labels 15": (x, y15), "3-d images": (x[:, 0], y), "images alone": x,
        "3 channels": (x.repeat(1, 3, 1, 1), y), "x_adv too short": x[:4], "val 32x32": _xy(8, size=32),
        "input_shape 3 channels": (3, 28, 28), "input_shape 2-d": (1, 28), "tuple model": _TupleNet(),
        "not a module": "lenet5-caffe", "another architecture": _Linear(),
    }.get(symbol, symbol)


#: (function, argument) -> bad values, the Python API's rows of the same rule as the CLI's: a one-line
#: RobustPruneError naming the argument (or its full value), before any work and before any file is written.
#: A string in <angle brackets> is a symbol for a value made from the baseline's data (see _api_value).
API_BAD: dict[tuple[str, str], list] = {
    ("export", "data"): ["<0..255 pixels>", "<labels 15>", "<3-d images>", "<images alone>"],
    ("export", "x_adv"): ["<x_adv too short>"],
    ("export", "input_shape"): ["<input_shape 3 channels>", "<input_shape 2-d>"],
    ("export", "model"): ["<tuple model>", "<not a module>"],
    ("export", "base"): ["<another architecture>", "<not a module>"],
    ("export", "eps"): [2.0, "abc", float("nan"), 0],
    ("export", "attack_steps"): [0, -1, "50", 2.5],
    ("export", "attack_targets"): [0],
    ("export", "format"): ["tflite"],
    ("export", "slim"): ["no"],
    ("export", "sparse"): ["no", True],
    ("export", "latency"): ["no"],
    ("export", "seed"): [-1],
    ("export", "out"): ["/proc/x/m.pt"],
    ("prune", "data"): ["<0..255 pixels>", "<labels 15>", "<3 channels>", "<3-d images>"],
    ("prune", "val"): ["<val 32x32>", "<labels 15>"],
    ("prune", "model"): ["<tuple model>", "<not a module>"],
    ("prune", "method"): ["no-such-method"],
    ("prune", "device"): ["banana"],
    ("prune", "compile"): ["no"],
    ("prune", "channels_last"): ["no"],
    ("prune", "progress"): ["yes"],
    ("prune", "eps"): [2.0, "abc"],
    ("prune", "epochs"): [-1, "abc", float("inf")],
    ("prune", "seed"): [-1, 1.5],
    ("prune", "rate"): [0.5, 1e9, "abc"],
    ("prune", "sparsity"): [1.5, 0],
    ("prune", "precision"): ["fp16"],
    ("prune", "dataset"): ["fashion-mnst"],
    ("prune", "teacher"): ["<not a module>"],
    ("prune", "schedule"): ["sometimes"],
}

API_CASES = [(fn, arg, bad) for (fn, arg), values in API_BAD.items() for bad in values]


def check_api_row(fn: str, arg: str, bad, tmp_path: Path, tripped: list[str]) -> None:
    import robustprune
    from robustprune.errors import RobustPruneError

    kwargs = _api_baseline(fn, tmp_path)
    value = _api_value(bad[1:-1], kwargs) if isinstance(bad, str) and bad.startswith("<") else bad
    kwargs[arg] = value
    if arg == "input_shape":
        kwargs.pop("data")
    try:
        getattr(robustprune, fn)(**kwargs)
    except RobustPruneError as exc:
        msg = str(exc)
    else:
        raise AssertionError(f"{fn}({arg}={bad!r}) was accepted")
    assert not tripped, f"{fn}({arg}={bad!r}): work started before the value was refused: {tripped}"
    assert "\n" not in msg, f"{fn}({arg}={bad!r}): more than one line: {msg}"
    assert names_it(msg, [arg, repr(bad), str(bad)]), f"{fn}({arg}={bad!r}): the error does not name it: {msg}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], f"{fn}({arg}={bad!r}) wrote files"


@pytest.mark.parametrize("fn,arg,bad", API_CASES, ids=[f"{f}-{a}={b!r}" for f, a, b in API_CASES])
def test_a_bad_api_argument_is_one_line_before_any_work(fn, arg, bad, tmp_path, tripwire):
    check_api_row(fn, arg, bad, tmp_path, tripwire)


@pytest.mark.parametrize("fn", ["export", "prune"])
def test_the_api_baselines_trip_the_tripwire(fn, tmp_path, tripwire):
    import robustprune

    try:
        getattr(robustprune, fn)(**_api_baseline(fn, tmp_path))
    except WorkStarted:
        pass
    assert tripwire, f"robustprune.{fn} baseline ran without touching the tripwire"


def test_a_broken_api_check_makes_its_row_fail(tmp_path, monkeypatch, tripwire):
    import robustprune.utils as utils

    monkeypatch.setattr(utils, "check_flag", lambda value, what: bool(value))  # 'no' is truthy again
    with pytest.raises(AssertionError):
        check_api_row("prune", "compile", "no", tmp_path, tripwire)


def test_numpy_data_is_converted_not_refused(tmp_path):
    import robustprune

    x, y = _xy(8)
    res = robustprune.export(_lenet(), tmp_path / "m.pt", format="torchscript", data=(x.numpy(), y.numpy()),
                             eps=0.1, attack_steps=1, latency=False)
    assert res.verification["passed"] and res.verification["n"] == 8


# ------------------------------------------------------------------------------------------------ study spec
def _spec_base(env) -> dict:
    return yaml.safe_load(env["spec"].read_text())


#: study key -> bad values (YAML values, as a study file gives them): a one-line ConfigError naming the key (or the
#: full value) when the file is read, so `--plan` refuses it too and nothing trains.
SPEC_BAD: dict[str, list] = {
    "datasets": [["no-such-dataset"], "mnist"],
    "architectures": [["no-such-arch"], ["lenet5-caffe*0"]],
    "width": [0, -1, "abc"],
    "seeds": [[-1], []],
    "train_limit": [5, "abc"],
    "val_size": [-1],
    "eval_n": [0],
    "eval_batch_size": [0],
    "base_objective": [{"name": "no-such-objective"}, {"name": "pgd-at", "steps": 0}],
    "base_train": [{"epochs": 0}, {"lr": -1}, {"optimizer": "adamw2"}],
    "methods": [["no-such-method"], ["hydra", "hydra"]],
    "compression": [[0.5], [], [1, 1.0e7]],
    "sparsity": [[1.5], ["abc"]],
    "method_rates": [{"hydra": [0.5]}, {"anp-bbd": [2]}],
    "method_sparsity": [{"hydra": [1.5]}],
    "group_rates": [{"unstructured": [2, 1.0e7]}, {"no-such-group": [2]}, {"unstructured": [0.5]}],
    "group_sparsity": [{"unstructured": [1.5]}],
    "method_settings": [{"flyingbird": {"milestones": [2.0]}}, {"hydra": {"no_such_setting": 1}},
                        {"hydra@x": {}}],
    "prune_epochs": [0, -1],
    "finetune_objective": [{"name": "no-such-objective"}],
    "finetune_limit": [5],
    "attacks": [[{"name": "apgd", "eps": [0.1], "n_target_classes": 20}], [{"name": "no-such-attack"}],
                [{"name": "pgd", "eps": [2]}], [{"name": "min-norm-linf", "eps_max": 5}]],
    "transfer_attacks": [["no-such-attack"]],
    "transfer": ["maybe"],
    "precision": ["fp16"],
    "compile": ["maybe"],
    "channels_last": ["maybe"],
    "eval_precision": ["bf16"],
    "export": [["tflite"]],
    "vulnerability": ["maybe"],
    "leaderboard": ["no-such-board"],
    "cost": [{"train_epoch_s": 0}, {"no_such": 1}],
    "base_models": [{"cifar10/lenet5-caffe": "/no/such.safetensors"}, {"mnist": "/no/such.safetensors"}],
}
#: Keys whose bad values are refused where they are used, with the reason.
SPEC_ELSEWHERE = {
    "name": "any text is a name",
    "data_dir": "a missing folder is refused by `study` before any work (the dataset's files are looked for there)",
    "storage": "a folder or URI, checked when the study opens it before any work",
}


def test_every_study_key_has_bad_value_rows():
    from robustprune.study.spec import StudySpec

    keys = set(StudySpec.model_fields) | {"sparsity", "method_sparsity", "group_sparsity"}
    missing = sorted(keys - set(SPEC_BAD) - set(SPEC_ELSEWHERE))
    assert not missing, f"study keys without bad-value rows in tests/test_cli_surface.py SPEC_BAD: {missing}"
    stale = sorted(set(SPEC_BAD) - keys)
    assert not stale, f"SPEC_BAD names keys that no longer exist: {stale}"


SPEC_CASES = [(key, bad) for key, values in SPEC_BAD.items() for bad in values]


def check_spec_row(key: str, bad, env, tmp_path: Path, tripped: list[str]) -> None:
    from robustprune.errors import RobustPruneError
    from robustprune.study import load_study_spec

    spec = _spec_base(env)
    if key == "method_settings" or key in ("method_rates", "method_sparsity"):
        spec["methods"] = sorted({*spec["methods"], *(k for k in bad if "@" not in k)})
    spec[key] = bad
    if key == "sparsity":
        spec.pop("compression", None)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    try:
        load_study_spec(path)
    except RobustPruneError as exc:
        msg = str(exc)
    else:
        raise AssertionError(f"{key}: {bad!r} was accepted")
    assert not tripped, f"{key}: {bad!r}: work started: {tripped}"
    assert "\n" not in msg, f"{key}: {bad!r}: more than one line: {msg}"
    assert names_it(msg, [key, *_spec_tokens(bad)]), f"{key}: {bad!r}: the error does not name it: {msg}"


def _spec_tokens(value) -> list[str]:
    """What names a study value: the value as written, each item of a list, each key and scalar of a mapping, at
    any depth (a nested setting such as ``milestones`` or ``n_target_classes`` names itself)."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (str(k), *_spec_tokens(v))]
    if isinstance(value, (list, tuple)):
        return [str(value)] + [t for v in value for t in _spec_tokens(v)]
    return [str(value)]


@pytest.mark.parametrize("key,bad", SPEC_CASES, ids=[f"{k}={b!r}" for k, b in SPEC_CASES])
def test_a_bad_study_key_is_one_line_when_the_file_is_read(key, bad, env, tmp_path, tripwire):
    check_spec_row(key, bad, env, tmp_path, tripwire)


def test_a_broken_spec_check_makes_its_row_fail(env, tmp_path, monkeypatch, tripwire):
    import robustprune.study.spec as spec_mod

    monkeypatch.setattr(spec_mod, "_check_as_run", lambda spec: None)  # the rates are no longer checked
    with pytest.raises(AssertionError):
        check_spec_row("group_rates", {"unstructured": [2, 1.0e7]}, env, tmp_path, tripwire)


#: Settings that are valid but change nothing here: one warning line each, kept in ``spec.warnings``.
SPEC_WARN = [
    ({"methods": ["harp"], "method_settings": {"harp": {"beta": 3.0}}}, "beta has no effect with loss pgd-at"),
    ({"methods": ["twin-rep"], "method_settings": {"twin-rep": {"beta": 3.0}}},
     "beta has no effect with loss pgd-at"),
    ({"group_rates": {"filter": [2, 4]}}, "group_rates / group_sparsity of filter: not used"),
    ({"methods": ["anp-bbd"], "compression": [1, 4]}, "compression / sparsity: not used, every listed method"),
    ({"compression": [1]}, "compression: no rate above 1, so magnitude-unstructured-global prunes nothing"),
]


@pytest.mark.parametrize("update,line", SPEC_WARN, ids=[w[1][:40] for w in SPEC_WARN])
def test_a_setting_without_effect_is_one_warning_kept_in_the_spec(update, line, env, tmp_path, monkeypatch, capsys):
    from robustprune.methods import METHODS

    if any(m not in METHODS.names() for m in update.get("methods", [])):
        pytest.fail(f"{update['methods']} is not a registered method")
    spec = {**_spec_base(env), **update}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, out, err = cli(monkeypatch, capsys, "study", str(path), "--plan")
    assert code == 0, err
    warns = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warns) == 1 and line in warns[0], err
    from robustprune.study import load_study_spec

    with pytest.warns(Warning):
        assert [w for w in load_study_spec(path).warnings if line in w]
    # the base spec itself: no warning at all
    path.write_text(yaml.safe_dump(_spec_base(env)))
    code, out, err = cli(monkeypatch, capsys, "study", str(path), "--plan")
    assert code == 0 and "warning" not in err, err


def test_plan_counts_the_training_it_states(env, monkeypatch, capsys):
    """--plan's budget line is true: 200 images x 1 base epoch + 100 images x 1 pruning epoch (one rate, one-shot
    or iterative to c = 2: one step) is 300 images, not "0 epochs of 50,000"."""
    code, out, err = cli(monkeypatch, capsys, "study", str(env["spec"]), "--plan")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "training:" in ln)
    assert "training: 300 training images processed in all (base 200, pruning 100)" in line, line
    assert "0.006 epochs of 50,000 images" in line and " 0 epochs" not in line, line
