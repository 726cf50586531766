"""The `robustprune` command: parse, call the library, print. No logic of its own."""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from robustprune.errors import ConfigError, RobustPruneError, RobustPruneWarning
from robustprune.train.defaults import BASE_OBJECTIVE as _BASE_OBJECTIVE
from robustprune.train.defaults import BASE_TRAIN as _BASE_TRAIN
from robustprune.train.defaults import SOURCES as _SRC
from robustprune.utils import check_writable_dir, check_writable_file, parse_eps

app = typer.Typer(
    help="Make neural networks small and adversarially robust at once, and measure that robustness honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _check_device(value: Optional[str]) -> Optional[str]:
    """--device: a device name torch knows and this machine has, checked before any work."""
    if value is None:
        return None
    from robustprune.utils import check_device

    try:
        check_device(value)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _check_eps(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        e = float(parse_eps(value))
    except (TypeError, ValueError, ZeroDivisionError):
        raise typer.BadParameter(f"{value!r} is not a number such as 0.1 or 8/255") from None
    if not 0 < e <= 1:
        raise typer.BadParameter(f"an L-inf budget lies in (0, 1] (pixel units, e.g. 8/255), got {value}")
    return value


DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: CUDA when present)",
                                                  callback=_check_device)]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset's files.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
PrecisionOpt = Annotated[str, typer.Option(
    help="Precision of training: auto (tf32 on CUDA, fp32 on the CPU), fp32 (IEEE, TF32 off), tf32 (TF32 tensor "
         "cores on CUDA) or bf16 (bfloat16 autocast, channels_last on CUDA). Evaluation always runs in fp32.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the forward passes of training.")]


def _echo(msg: str) -> None:
    typer.echo(msg)


def _warn(msg: str) -> None:
    """One ``warning: ...`` line on stderr."""
    typer.echo(f"warning: {msg}", err=True)


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether the user gave option ``param`` on the command line (not its default)."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _version_callback(value: bool) -> None:
    if value:
        try:
            from robustprune.provenance import code_version

            version = code_version()
        except ImportError:
            from robustprune import __version__ as version
        typer.echo(f"robustprune {version}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version_callback)] = False,
) -> None:
    """Make neural networks small and adversarially robust at once, and measure that robustness honestly."""


class ListWhat(str, Enum):
    datasets = "datasets"
    models = "models"
    methods = "methods"
    attacks = "attacks"
    objectives = "objectives"


@app.command("list")
def list_cmd(
    what: Annotated[ListWhat, typer.Argument(help="What to list.")],
    settings: Annotated[Optional[str], typer.Option(
        "--settings", help="With `methods`: print this method's settings, their defaults and sources.")] = None,
) -> None:
    """List the registered datasets, models, methods (with their papers), attacks or objectives."""
    import importlib

    from robustprune.methods import METHODS

    if settings is not None:
        if what != ListWhat.methods:
            raise ConfigError("--settings goes with `robustprune list methods --settings NAME`")
        m = METHODS.get(settings)
        typer.echo(f"{m.name}: {m.description}")
        typer.echo(f"paper: {m.paper}; rate: {'learned by the method' if m.rate_kind == 'learned' else 'set (--rate)'}"
                   f"; group: {m.group}")
        rows = m.Settings.describe()
        w = max(len(r["name"]) for r in rows) if rows else 0
        for r in rows:
            desc = f"  {r['description']}" if r["description"] else ""
            typer.echo(f"  {r['name']:<{w}}  {r['default']!r:<14}  [{r['source']}]{desc}")
        return
    module, attr = {"datasets": ("robustprune.data", "DATASETS"), "models": ("robustprune.models", "MODELS"),
                    "methods": ("robustprune.methods", "METHODS"), "attacks": ("robustprune.attacks", "ATTACKS"),
                    "objectives": ("robustprune.objectives", "OBJECTIVES")}[what.value]
    reg = getattr(importlib.import_module(module), attr)
    names = reg.names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        desc = reg.describe(name)
        if what == ListWhat.datasets:
            s = reg.get(name)
            desc = (f"{s.shape[0]}x{s.shape[1]}x{s.shape[2]}, {s.num_classes} classes, "
                    f"default eps Linf {s.eps_linf:g}" + (f" ({s.default_dir})" if s.default_dir else ""))
        elif what == ListWhat.methods:
            m = reg.get(name)
            desc = f"{m.description} [{m.paper.key}]" + (" (rate learned)" if m.rate_kind == "learned" else "")
        elif what in (ListWhat.attacks, ListWhat.objectives):
            settings = _settings_with_defaults(name, reg, what == ListWhat.attacks)
            if settings:
                desc = f"{desc}\n{'':<{width}}  settings: {settings}"
        typer.echo(f"{name:<{width}}  {desc}")
    if what == ListWhat.methods:
        typer.echo("\n`robustprune list methods --settings NAME` shows a method's settings; `prune --set key=value` "
                   "and a study's `method_settings` change them.")


def _settings_with_defaults(name: str, reg: Any, attack: bool) -> str:
    """``key=default`` for every setting an attack or objective takes (what ``NAME:key=value`` may set)."""
    import inspect

    if attack:
        from robustprune.attacks import get_attack_info

        info = get_attack_info(name)
        return ", ".join(f"{k}={info.default(k)!r}" for k in info.settings_names())
    try:
        params = inspect.signature(reg.get(name)).parameters
    except (TypeError, ValueError):
        return ""
    skip = {"self", "inner", "teacher", "args", "kwargs"}
    return ", ".join(f"{k}={'(required)' if p.default is inspect.Parameter.empty else repr(p.default)}"
                     for k, p in params.items() if k not in skip and p.kind is not p.VAR_KEYWORD)


def parse_kv(text: str, what: str, list_keys: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """'pgd:eps=0.1;0.2,steps=20' -> ('pgd', {'eps': ['0.1', '0.2'], 'steps': 20}) with list_keys=('eps',)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"{what} {text!r} has no name; write NAME or NAME:key=value,...")
    kw: dict[str, Any] = {}
    last = None
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in part:
            if last in list_keys or last in ("eps", "alpha"):  # eps=0.05,0.1: a second budget after a comma
                raise ConfigError(f"{what} {text!r}: {part!r} after {last}= is not key=value; several budgets are "
                                  f"separated by ';', not ',': quote it, e.g. '{text.replace(',' + part, ';' + part, 1)}'")
            raise ConfigError(f"{what} option {part!r} in {text!r} is not key=value")
        last = part.split("=", 1)[0].strip().replace("-", "_")
        k, v = (s.strip() for s in part.split("=", 1))
        k = k.replace("-", "_")
        if k in list_keys:
            kw[k] = [e for e in v.split(";") if e]
            continue
        if k in ("eps", "alpha"):
            try:
                kw[k] = parse_eps(v)  # "8/255" or "0.1"
            except ValueError:
                raise ConfigError(f"{what} {k}={v!r} in {text!r} is not a number such as 0.1 or 8/255") from None
            continue
        low = v.lower()
        if low in ("true", "false"):
            kw[k] = low == "true"
        elif low in ("none", "null"):
            kw[k] = None
        else:
            try:
                kw[k] = int(v)
            except ValueError:
                try:
                    kw[k] = float(v)
                except ValueError:
                    kw[k] = v
    return name, kw


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Dataset name (see `robustprune list datasets`).")] = "fashion-mnist",
    arch: Annotated[str, typer.Option(help="Architecture (see `robustprune list models`).")] = "lenet5-caffe",
    width: Annotated[float, typer.Option(help="Width factor of the architecture.")] = 1.0,
    objective: Annotated[str, typer.Option(help="NAME[:key=value,...], e.g. pgd-at:eps=0.1,steps=10; default: "
                                                "fast-at at the dataset's eps (" + _SRC["objective"] + ")")
                         ] = _BASE_OBJECTIVE,
    epochs: Annotated[int, typer.Option(help="Training epochs (at least 1); default: " + _SRC["epochs"])
                      ] = _BASE_TRAIN["epochs"],
    batch_size: Annotated[int, typer.Option(help="Training batch size; default: " + _SRC["batch_size"])
                          ] = _BASE_TRAIN["batch_size"],
    optimizer: Annotated[str, typer.Option(help="sgd or adam; default: " + _SRC["optimizer"])
                         ] = _BASE_TRAIN["optimizer"],
    lr: Annotated[float, typer.Option(help="Base learning rate (scaled over training by --schedule); default: "
                                           + _SRC["lr"])] = _BASE_TRAIN["lr"],
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay of the optimiser; default: "
                                                     + _SRC["weight_decay"])] = _BASE_TRAIN["weight_decay"],
    schedule: Annotated[str, typer.Option(
        help="Learning-rate schedule: constant, step or cosine; default: " + _SRC["schedule"])
    ] = _BASE_TRAIN["schedule"],
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, data order and validation split.",
                                      min=0)] = 0,
    train_limit: Annotated[Optional[int], typer.Option(help="Use only this many training images.", min=1)] = None,
    val_size: Annotated[int, typer.Option(help="Validation images carved from the training set.")] = 5000,
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors, with a .json beside it).")] = Path(
        "runs/model.safetensors"),
    precision: PrecisionOpt = "auto",
    compile_: CompileOpt = False,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a model (natural or adversarial) and save the validation-selected checkpoint."""
    from robustprune.checkpoint import save_checkpoint
    from robustprune.data import get_spec, load_splits
    from robustprune.errors import DivergenceError
    from robustprune.models import MODELS, model_for_dataset
    from robustprune.objectives import build_objective
    from robustprune.train import TrainConfig, evaluate_split, fit, validated
    from robustprune.precision import check_precision, effective_precision
    from robustprune.utils import default_device, seed_everything

    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (got {epochs}): with no training epoch an untrained model "
                          "would be saved")
    # every name and value is checked before any data is looked for (a missing dataset must not hide a typo)
    precision = check_precision(precision, what="--precision")
    spec = get_spec(dataset)
    MODELS.get(arch)
    obj_name, obj_kw = parse_kv(objective, "objective")
    if obj_name != "natural":
        obj_kw.setdefault("eps", spec.eps_linf)
    obj = build_objective(obj_name, **obj_kw)
    try:
        cfg = validated(TrainConfig, dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                                          weight_decay=weight_decay, schedule=schedule, seed=seed,
                                          progress=not quiet, precision=precision, compile=compile_),
                        "training settings")
    except ConfigError as exc:  # name the options as typed (--batch-size), not the settings' fields (batch_size)
        msg = str(exc).replace("invalid training settings: ", "invalid ")
        for field in ("batch_size", "weight_decay", "optimizer", "schedule", "epochs", "lr", "seed"):
            msg = re.sub(rf"(?<![\w-]){field}:", f"--{field.replace('_', '-')}:", msg)
        raise ConfigError(msg) from None
    check_writable_file(out, "--out checkpoint")
    check_writable_file(_sidecar(out), "--out checkpoint's sidecar")
    dev = default_device(device)
    splits = load_splits(dataset, data_dir=data_dir, val_size=val_size, seed=seed, device=dev, train_limit=train_limit)
    seed_everything(seed)
    model = model_for_dataset(arch, splits.spec, width=width).to(dev)
    if not quiet:
        _echo(f"training {arch} on {splits.spec.name} ({len(splits.train)} images, {len(splits.val)} for validation)"
              f" with {obj_name} for {epochs} epoch(s), {optimizer} lr {lr:g} ({schedule} schedule), "
              f"{effective_precision(precision, dev)} on {dev}")
    try:
        res = fit(model, obj, splits.train, splits.val, cfg, val_eps=obj_kw.get("eps"),
                  augment=splits.spec.augment)
    except DivergenceError as exc:
        if not exc.where:
            raise
        raise DivergenceError(f"training diverged {exc.where}; no checkpoint was written to {out}; {exc.advice}",
                              result=exc.result, restored_epoch=exc.restored_epoch, where=exc.where,
                              advice=exc.advice) from None
    s = splits.spec
    meta = {"architecture": arch, "dataset": s.name, "num_classes": s.num_classes, "input_shape": list(s.shape),
            "width": width, "mean": list(s.mean), "std": list(s.std),
            "config": {"objective": {"name": obj_name, **obj_kw}, "train": cfg.model_dump(),
                       "train_limit": train_limit, "val_size": val_size,
                       "train_precision": effective_precision(precision, dev), "eval_precision": "fp32"},
            "train": res.to_dict()}
    save_checkpoint(out, model, meta=meta)
    if len(splits.val) == 0:  # no validation images: no number to show (0.000 would read as a measured accuracy)
        _echo(f"saved {out} (last epoch, {res.wall_time:.0f}s); validation: none (--val-size 0: no images were held "
              "out, so the last epoch is kept and no accuracy is measured; give --val-size N to select and measure)")
        return
    ev = evaluate_split(model, splits.val, n=min(1000, len(splits.val)), eps=obj_kw.get("eps"), steps=20, seed=seed)
    _echo(f"saved {out} (best epoch {res.best_epoch} by {res.selected_by}, {res.wall_time:.0f}s); validation: "
          + ", ".join(f"{k} {v:.3f}" for k, v in ev.items()))


def _sidecar(path: Path) -> Path:
    """The JSON sidecar written beside a checkpoint."""
    from robustprune.checkpoint import sidecar_path

    return Path(sidecar_path(path))


@app.command()
def prune(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to prune (.safetensors).")],
    method: Annotated[str, typer.Option(help="Pruning method (see `robustprune list methods`).")] = (
        "magnitude-unstructured-global"),
    rate: Annotated[Optional[list[float]], typer.Option(
        help="Compression rate(s) c (1/c of the prunable weights remain); repeat for several. Not for methods that "
             "learn their rate.")] = None,
    sparsity: Annotated[Optional[list[str]], typer.Option(
        help="The same in the field's words: sparsity s in [0, 1) (or 99%), the fraction of the prunable weights "
             "removed; s is rate 1/(1-s) (--sparsity 0.99 = --rate 100). Repeat for several; with --rate both must "
             "agree.")] = None,
    epochs: Annotated[float, typer.Option(help="Epochs of every training phase unless the method's settings give "
                                               "a phase its own (e.g. --set admm.epochs=3).")] = 1,
    train_limit: Annotated[Optional[int], typer.Option(help="Use only this many training images.", min=1)] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="A method setting key=value (dotted for a phase, e.g. admm.lr=1e-3); repeat.")] = None,
    objective: Annotated[Optional[str], typer.Option(
        help="Fine-tuning objective NAME[:key=value,...] for methods that take any (magnitude, random); default "
             "pgd-at at --eps.")] = None,
    eps: Annotated[Optional[str], typer.Option(help="L-inf budget of adversarial training (default: the dataset's).",
                                               callback=_check_eps)] = None,
    model_factory: Annotated[Optional[str], typer.Option(
        "--model", help="package.module:factory building your own model (for a checkpoint of a custom model).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data order and the method (the validation split is the parent checkpoint's).", min=0)] = 0,
    out: Annotated[Path, typer.Option(help="Folder for the pruned checkpoints.")] = Path("runs/pruned"),
    precision: PrecisionOpt = "auto",
    compile_: CompileOpt = False,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Prune a checkpoint with any method to one or more compression rates; save each as a checkpoint whose sidecar
    states the method, its settings, the achieved compression and how to remake it."""
    from robustprune.checkpoint import checkpoint_dataset, load_checkpoint, save_checkpoint
    from robustprune.data import load_splits
    from robustprune.methods import PruneTask, get_method
    from robustprune.methods.interface import FLAG_TEXT, achieved_compression, result_flags
    from robustprune.objectives import build_objective
    from robustprune.provenance import code_version, file_sha256
    from robustprune.train import evaluate_split
    from robustprune.precision import check_precision, effective_precision
    from robustprune.rates import merge_rates, rate_from_sparsity, sparsity_percent
    from robustprune.utils import default_device

    precision = check_precision(precision, what="--precision")
    dev = default_device(device)
    m = get_method(method)
    overrides: dict[str, Any] = {}
    for item in set_ or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value (e.g. --set admm.lr=1e-3)")
        k, v = (t.strip() for t in item.split("=", 1))
        overrides[k] = _parse_value(v)
    settings = m.settings(overrides)
    given = merge_rates(rate, sparsity)  # --sparsity s is --rate 1/(1-s); both given: they must agree
    if m.rate_kind == "learned" and given:
        raise ConfigError(f"{m.name} learns its compression rate; drop --{'rate' if rate else 'sparsity'} (the "
                          "achieved rate is reported)")
    rates: list[float | None] = [None] if m.rate_kind == "learned" else sorted({float(r) for r in (given or [4.0])})
    check_writable_dir(out, "--out folder")
    net, meta, masks = load_checkpoint(checkpoint, dev, model=_user_model(model_factory) if model_factory else None)
    achieved = achieved_compression(net)
    stored = (meta.get("config") or {}).get("rate")
    # An already-pruned checkpoint continues from its target rate (in the method's own rate space: a filter-pruned c=4
    # model is ~1.05x overall); otherwise from the compression its weights show.
    start = float(stored) if isinstance(stored, (int, float)) and stored >= 1 else achieved
    for r in rates:
        try:
            m.check_rate(r, start)
            m.check_max_rate(net, r)
        except ConfigError as exc:  # name the option as typed: --sparsity 0 is rate 1
            if sparsity and not rate and r is not None:
                typed = next((v for v in sparsity if abs(rate_from_sparsity(v) - r) <= 1e-9 * r), sparsity[0])
                raise ConfigError(f"--sparsity {typed} (compression rate {r:g}): {exc}"
                                  + ("; a sparsity of 0 removes no weight: give one above 0, e.g. --sparsity 0.5"
                                     if r <= 1 else "")) from None
            if rate and r is not None:
                raise ConfigError(f"--rate {r:g}: {exc}") from None
            raise
    val_size, split_seed = _parent_split(meta)  # the parent's validation images stay out of pruning's training
    splits = load_splits(checkpoint_dataset(meta, checkpoint), data_dir=data_dir, val_size=val_size, seed=split_seed, device=dev,
                         train_limit=train_limit)
    budget = parse_eps(eps) if eps is not None else splits.spec.eps_linf
    obj = None
    if objective is not None:
        obj_name, obj_kw = parse_kv(objective, "objective")
        if obj_name != "natural":
            obj_kw.setdefault("eps", budget)
        obj = build_objective(obj_name, **obj_kw)
    task = PruneTask(train=splits.train, val=splits.val, eps=budget, epochs=epochs, objective=obj,
                     dataset=splits.spec.name, augment=splits.spec.augment, seed=seed, progress=not quiet,
                     masks=masks, start_rate=start, precision=precision, compile=compile_)
    m.check_budget(settings, epochs=epochs, n_train=len(splits.train))  # no phase of 0 gradient steps
    unused = [f"--{why}" for why in m.unused_options(settings, epochs=epochs if _given(ctx, "epochs") else None,
                                                     eps=budget if eps is not None else None)]
    for why in unused:
        _warn(why)  # an option the method does not use is said, never silently dropped (and kept in the sidecar)
    parent_hash = file_sha256(checkpoint)
    if not quiet:
        _echo(f"pruning {checkpoint} (compression {start:.3g}) with {m.name} [{m.paper.key}] to "
              + ", ".join("learned rate" if r is None else f"c={r:g} (sparsity {sparsity_percent(r)} %)"
                          for r in rates)
              + f"; {len(splits.train)} training images, {epochs:g} epoch(s) per phase, "
              f"{effective_precision(precision, dev)} on {dev}")
    base_clean = evaluate_split(net, splits.val, n=min(1000, len(splits.val)), eps=None, steps=1, seed=seed).get(
        "clean")  # for the accuracy-lost flag: what the pruned model is compared with
    for res in m.prune_many(net, task, rates, settings):
        ev = evaluate_split(res.model, splits.val, n=min(1000, len(splits.val)), eps=budget, steps=20, seed=seed)
        flags = result_flags(res, val_clean=ev.get("clean"), num_classes=splits.spec.num_classes,
                             start_compression=achieved, base_val_clean=base_clean)
        label = "learned" if res.rate is None else f"{res.rate:g}"
        path = out / f"{checkpoint.stem}-{m.name}-c{label}.safetensors"
        new_meta = {**meta, "code_version": code_version(),
                    "config": {"parent": str(checkpoint), "parent_sha256": parent_hash, "method": m.name,
                               "paper": m.paper.key, "rate": res.rate, "rate_kind": res.rate_kind, "group": res.group,
                               "settings": res.settings, "epochs": epochs, "train_limit": train_limit,
                               "eps": budget, "objective": objective, "seed": seed, "val_size": val_size,
                               "split_seed": split_seed, "unused_options": unused, "data_dir":
                                   str(data_dir) if data_dir else None,
                               "train_precision": effective_precision(precision, dev), "eval_precision": "fp32",
                               "command": ["robustprune", *sys.argv[1:]]},
                    "achieved_compression": res.achieved_compression,
                    "achieved_sparsity": 1.0 - 1.0 / res.achieved_compression, "prune_result": res.summary(),
                    "validation": ev, "flags": flags}
        save_checkpoint(path, res.model, meta=new_meta, masks=res.masks)
        _echo(f"saved {path}: c={label}" + ("" if res.rate is None else f" (sparsity {sparsity_percent(res.rate)} %)")
              + f", achieved compression {res.achieved_compression:.3g} (sparsity "
              f"{100 * (1 - 1 / res.achieved_compression):.2f} %); validation: "
              + ", ".join(f"{k} {v:.3f}" for k, v in ev.items()))
        for f in flags:
            _echo(f"warning: {path.name}: {FLAG_TEXT.get(f, f)}")


def _parent_split(meta: dict[str, Any]) -> tuple[int | float, int]:
    """The validation split a checkpoint was selected on: (val_size, seed of the carving permutation).

    A checkpoint from `train` stores ``val_size`` and its ``train.seed``; one from `prune` stores both as it used them.
    Pruning on the same split keeps the parent's validation images out of the pruned model's training, so its
    validation numbers stay honest. Older checkpoints without them get the defaults (5000, seed 0).
    """
    cfg = meta.get("config") or {}
    val_size = cfg.get("val_size", 5000)
    seed = cfg.get("split_seed", (cfg.get("train") or {}).get("seed", 0))
    return (val_size if isinstance(val_size, (int, float)) and not isinstance(val_size, bool) else 5000,
            seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0)


def _parse_value(text: str) -> Any:
    """A --set value: YAML scalars (numbers, true/false, null) and lists; anything else stays a string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _user_model(spec: str) -> Any:
    from robustprune.models.custom import load_factory

    return load_factory(spec)()


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to evaluate (.safetensors).")],
    attack: Annotated[Optional[list[str]], typer.Option(
        help="NAME[:key=value,...] of any registered attack (see `robustprune list attacks`) with its settings; "
             "several budgets as eps=0.05;0.1 (quote it). Repeat for several attacks. Default: pgd at the "
             "dataset's eps.")] = None,
    n: Annotated[int, typer.Option(help="Test points (the first n of the test split).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Points attacked at once (lower it if memory runs out).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the attacks' random starts.", min=0)] = 0,
    db: Annotated[Optional[Path], typer.Option(help="Also append the rows (and checks) to this results database.")
                  ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write a RobustBench-style JSON here.")] = None,
    transfer_from: Annotated[Optional[Path], typer.Option(
        "--transfer-from", help="Also run every attack as a transfer attack crafted on this checkpoint.")] = None,
    vulnerability: Annotated[bool, typer.Option(
        "--vulnerability", help="Also measure the latent vulnerability (ANP-VS Eq. 1-2) under each budget attack.")
    ] = False,
    no_checks: Annotated[bool, typer.Option("--no-checks", help="Skip the sanity checks.")] = False,
    check_n: Annotated[int, typer.Option(help="Points the sanity checks rerun attacks on.")] = 100,
    model_factory: Annotated[Optional[str], typer.Option(
        "--model", help="package.module:factory building your own model (for a checkpoint of a custom model).")
    ] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No plan before the work starts, no progress bars.")
                     ] = False,
) -> None:
    """Clean and robust accuracy of a checkpoint on the test split, with sanity checks next to the numbers."""
    from robustprune.checkpoint import checkpoint_dataset, load_checkpoint
    from robustprune.data import load_splits
    from robustprune.evaluation import evaluate_model, size_metrics
    from robustprune.study import ResultsStore, code_version
    from robustprune.utils import config_hash, default_device

    if n < 1:
        raise ConfigError(f"--n must be at least 1 (got {n})")
    if check_n < 1:
        raise ConfigError(f"--check-n must be at least 1 (got {check_n})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    specs = _eval_attack_configs(attack or ["pgd"])
    if json_out is not None:
        check_writable_file(json_out, "--json file")
    if db is not None:
        check_writable_file(db, "--db database")
    dev = default_device(device)
    model, meta, _ = load_checkpoint(checkpoint, dev, model=_user_model(model_factory) if model_factory else None)
    _refuse_nonfinite(model, checkpoint)
    source = None
    if transfer_from is not None:
        source, src_meta, _ = load_checkpoint(transfer_from, dev)
        _refuse_nonfinite(source, transfer_from)
        if src_meta.get("dataset") != meta.get("dataset"):
            raise ConfigError(f"--transfer-from {transfer_from} was trained on {src_meta.get('dataset')!r}, the "
                              f"evaluated model on {meta.get('dataset')!r}; transfer needs the same dataset")
    with warnings.catch_warnings():  # the data layer's "test_limit exceeds the test split" is said below as --n
        warnings.simplefilter("ignore", RobustPruneWarning)
        splits = load_splits(checkpoint_dataset(meta, checkpoint), data_dir=data_dir, val_size=0, device=dev,
                             test_limit=n)
    test = splits.test
    spec = splits.spec
    if n > len(test):
        _warn(f"--n {n} is more than the {len(test)} test images of {spec.name}; evaluating all {len(test)}")
        n = len(test)
    plan = _plan_lines(specs, n=n, dataset=spec.name, default_eps={"Linf": spec.eps_linf, "L2": spec.eps_l2},
                       transfer_from=transfer_from, checks=not no_checks, check_n=min(check_n, n),
                       vulnerability=vulnerability)  # also refuses an attack without budgets, before any work
    from robustprune.attacks.config import check_against_model

    for s_ in specs:  # targets within the classes, L2 / L0 budgets within the image: before any work
        check_against_model(s_, int(meta.get("num_classes") or spec.num_classes), tuple(spec.shape))
    kept_in = [f"{p}" for p in (json_out, db) if p is not None]
    if kept_in:
        plan.append(f"  each finished (attack, eps) result is written to {' and '.join(kept_in)} as it comes")
    if not quiet:
        for line in plan:
            _echo(line)
    model_id = config_hash({"checkpoint": str(checkpoint.resolve()), "meta": meta.get("config")})
    source_id = str(transfer_from) if transfer_from is not None else "source"
    base_model = None
    if meta.get("slim") and not model_factory:  # its layers were cut: count what it lost against the architecture
        from robustprune.models import model_for_dataset

        base_model = model_for_dataset(meta["architecture"], spec, width=float(meta.get("width") or 1.0))
    sizes = size_metrics(model, spec.shape, base=base_model)
    cfg = meta.get("config", {})
    writer = _EvaluationWriter(
        json_out=json_out, db=db,
        json_meta={"model": str(checkpoint), "dataset": meta["dataset"], "architecture": meta["architecture"],
                   "width": meta.get("width"), "transfer_from": str(transfer_from) if transfer_from else None,
                   "code_version": code_version(), **sizes},
        db_fields={"dataset": meta["dataset"], "architecture": meta["architecture"], "width": meta.get("width"),
                   "method": cfg.get("method", "unpruned"),
                   "rate": cfg.get("rate", 1.0) if cfg.get("method") else 1.0,
                   "rate_kind": cfg.get("rate_kind", "set") if cfg.get("method") else "none",
                   "group": cfg.get("group", "none"), "settings": cfg.get("settings", {}),
                   "flags": meta.get("flags", []), "seed": seed, "model_id": model_id,
                   "code_version": code_version(), "study": "evaluate", **sizes})
    progress = {"progress": not quiet} if "progress" in inspect.signature(evaluate_model).parameters else {}
    try:
        report = evaluate_model(model, test.x[:n], test.y[:n], specs, **progress, default_eps=spec.eps_linf,
                                eps_by_norm={"Linf": spec.eps_linf, "L2": spec.eps_l2}, batch_size=batch_size,
                                seed=seed, transfer_from=source, transfer_source=source_id, checks=not no_checks,
                                check_subset=check_n, vulnerability=vulnerability, warn=False,
                                on_row=writer.add)
    except KeyboardInterrupt:  # say what is true: the finished (attack, eps) results were written as they came
        raise _Interrupted(f"interrupted; {writer.kept()}") from None
    _print_evaluation(report, sizes)
    if json_out is not None:
        writer.write_json(report, complete=True)
        _echo(f"wrote {json_out}")
    if db is not None:
        evaluation_id = config_hash({"attacks": [s.settings() | {"eps": list(s.eps)} for s in specs], "n": n,
                                     "seed": seed, "transfer_from": source_id if source is not None else None})
        if report.checks:
            with ResultsStore(db) as store:
                store.put_checks(model_id, report.checks, evaluation_id=evaluation_id, code_version=code_version())
        _echo(f"appended {len(report.rows)} rows" + (f" and {len(report.checks)} checks" if report.checks else "")
              + f" to {db}")


class _Interrupted(Exception):
    """Ctrl-C in a command that says what it kept (its message); exit status 130."""


class _EvaluationWriter:
    """``evaluate``'s outputs written as the results come: every finished (attack, ε) row goes to the database
    at once and the JSON is rewritten (atomically, marked ``"complete": false``) after each, so an interrupt or a
    crash keeps what was finished; the last write adds the curves and checks and marks the JSON complete."""

    def __init__(self, *, json_out: Path | None, db: Path | None, json_meta: dict[str, Any],
                 db_fields: dict[str, Any]) -> None:
        self.json_out, self.db = json_out, db
        self.json_meta, self.db_fields = json_meta, db_fields
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        from robustprune.evaluation import EvaluationReport
        from robustprune.study import ResultsStore
        from robustprune.utils import config_hash

        self.rows.append(row)
        if self.db is not None:
            full = {**self.db_fields, **row,
                    "config_hash": config_hash([self.db_fields["model_id"], row["attack_hash"], row["eps_str"]])}
            with ResultsStore(self.db) as store:
                store.put_results([full])
        if self.json_out is not None:
            self.write_json(EvaluationReport(rows=list(self.rows)), complete=False)

    def write_json(self, report: Any, *, complete: bool) -> None:
        assert self.json_out is not None
        doc = report.to_json(**self.json_meta, complete=complete)
        tmp = self.json_out.with_name(f".{self.json_out.name}.partial")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.json_out)

    def kept(self) -> str:
        """What an interrupt leaves behind, in words."""
        done = [r for r in self.rows if r["attack"] != "clean"]
        where = [str(p) for p in (self.json_out, self.db) if p is not None]
        if not where:
            return ("nothing was written (no --json or --db given); give one of them to keep each finished "
                    "(attack, eps) result as it comes")
        if not self.rows:
            return "no result had finished, so nothing was written"
        return (f"the clean accuracy and {len(done)} finished (attack, eps) result(s) are in {' and '.join(where)}"
                + (" (the JSON says \"complete\": false)" if self.json_out is not None else "")
                + "; rerun the same command for all of them")


def _eval_attack_configs(texts: list[str]) -> list[Any]:
    """``--attack`` texts -> validated ``AttackConfig``s (unknown attacks and settings fail here, before any work)."""
    from robustprune.evaluation import AttackConfig

    out = []
    for a in texts:
        name, kw = parse_kv(a, "attack", list_keys=("eps",))
        eps = kw.pop("eps", ())
        out.append(AttackConfig.build(name, eps, **kw))
    return out


def _refuse_nonfinite(model: Any, path: Path) -> None:
    """A checkpoint with NaN / infinite weights gives meaningless numbers: refuse it before any work or row."""
    from robustprune.errors import CheckpointError
    from robustprune.utils import nonfinite_tensor

    bad = nonfinite_tensor(model)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} has NaN or infinite values in {bad} (a diverged training?); "
                              "nothing was evaluated or stored; retrain it, e.g. with a lower learning rate")


def _attack_cost(spec: Any, n: int) -> str:
    """``; 100 steps x 1 restart x 4 runs (APGD-CE + 3 targets) = 400 gradient steps per point and budget`` for the
    plan line (AutoAttack: its own schedule)."""
    from robustprune.evaluation.attack_info import attack_runs

    info, opts = spec.info, spec.options
    if info.name == "autoattack":
        return "; AutoAttack's own schedule (standard: APGD-CE, APGD-T x 9, FAB-T x 9, Square 5,000 queries)"
    steps, restarts, runs, what = attack_runs(info, opts)
    per = steps * restarts * runs
    budgets = 1 if info.min_norm else max(1, len(spec.eps) or 1)
    return (f"; {steps} steps x {restarts} restart(s) x {runs} run(s){f' ({what})' if what else ''} = {per:,} "
            "gradient steps per point" + (f" and budget, x {budgets} budgets" if budgets > 1 else "")
            + f" ({per * budgets * n:,} in all)")


def _plan_lines(specs: list[Any], *, n: int, dataset: str, default_eps: dict[str, float], transfer_from: Path | None,
                checks: bool, check_n: int, vulnerability: bool) -> list[str]:
    """What ``evaluate`` is about to run, printed before the work starts (the work itself shows no progress)."""
    lines = [f"plan: {n} test point(s) of {dataset}; clean accuracy, then {len(specs)} attack(s):"]
    for s in specs:
        norm = s.info.norm  # as evaluation.run.budgets_for picks the default budget
        default = default_eps.get(norm)
        if not s.eps and default is None:  # the evaluation would refuse it after the clean pass; refuse it now
            raise ConfigError(f"attack {s.name!r} ({norm}) needs budgets: give eps=..., e.g. {s.name}:eps=0.5;1.0")
        eps = ", ".join(f"{e:g}" for e in s.eps) if s.eps else f"{default:g} (the dataset's default {norm} budget)"
        opts = ", ".join(f"{k}={v}" for k, v in sorted(s.options.items()))
        lines.append(f"  {s.name}: eps {eps}" + (f"; {opts}" if opts else "") + _attack_cost(s, n))
    if transfer_from is not None:
        lines.append(f"  the same attacks crafted on {transfer_from} and transferred (black-box)")
    if vulnerability:
        lines.append("  latent vulnerability of every layer under each budget attack")
    if checks:
        lines.append(f"  sanity checks on the first {check_n} point(s): rerun at a very large eps, rerun with twice "
                     "the steps and restarts, input gradients: about 5x each attack's cost on those points (skip "
                     "them with --no-checks)")
    else:
        lines.append("  no sanity checks (--no-checks)")
    return lines


def _print_evaluation(report: Any, sizes: dict[str, Any]) -> None:
    for r in report.rows:
        label = "clean" if r["attack"] == "clean" else f"{r['attack']} eps={r['eps_str']}" + (
            f" ({r['norm']})" if r["norm"] not in (None, "Linf") else "")
        _echo(f"{label:<28} {100 * r['robust_acc']:6.2f}%  (n={r['n_eval']}, {r['eval_wall_time']:.1f}s)")
    for c in report.curves:
        med = c["median_norm"]
        _echo(f"{c['attack']} ({c['norm']}): median minimal norm {'inf' if med is None else f'{med:.4g}'}, "
              f"{c['n_found']}/{c['n_points']} points broken")
    for v in report.vulnerability:
        _echo(f"vulnerability {v['threat']} {v['attack']} eps={v['eps_str']}: network {v['network']:.4f} ("
              + ", ".join(f"{k} {x:.4f}" for k, x in v["layers"].items()) + ")")
    _echo(f"sparsity {sizes['achieved_sparsity']:.4f}, params {sizes['params_nonzero']}/{sizes['params_total']} "
          f"non-zero, FLOPs {sizes['flops_effective']}/{sizes['flops_dense']} effective/dense; filters removed "
          f"{sizes['filters_removed']:.4f}, dense FLOPs removed "
          + ("n/a (not slimmable)" if sizes.get("flops_removed") is None else f"{sizes['flops_removed']:.4f}"))
    if not report.checks:
        _echo("sanity checks: not run")
    else:
        bad = report.failed_checks
        _echo(f"sanity checks: {len(report.checks) - len(bad)}/{len(report.checks)} passed")
        for c in bad:
            typer.echo(f"warning: sanity check {c['name']} failed: {c['detail']}", err=True)


@app.command()
def study(
    spec_file: Annotated[Optional[Path], typer.Argument(help="YAML study file; none: the quick default study.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (results.sqlite, checkpoints, report).")] = Path(
        "runs/default-study"),
    precision: Annotated[Optional[str], typer.Option(
        help="Precision of every training phase, overriding the study file's `precision`: auto (tf32 on CUDA, "
             "fp32 on the CPU), fp32 (IEEE, TF32 off), tf32 or bf16 (bfloat16 autocast, channels_last on CUDA). Evaluation runs in fp32.")] = None,
    compile_: Annotated[Optional[bool], typer.Option(
        "--compile/--no-compile", help="torch.compile the forward passes of training (overrides `compile`).")] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    ray: Annotated[bool, typer.Option("--ray", help="Run the cells as Ray tasks on a local Ray instance "
                                                    "(needs the \\[ray] extra: pip install -e \".\\[ray]\").")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Run the cells as Ray tasks on this existing Ray cluster (e.g. auto, ray://host:10001)."
    )] = None,
    cpus_per_task: Annotated[float, typer.Option(
        "--cpus-per-task", help="With --ray / --ray-address: CPUs each work unit's task asks for, and torch's "
                                "thread count in it.")] = 1,
    gpus_per_task: Annotated[Optional[float], typer.Option(
        "--gpus-per-task", help="With --ray / --ray-address: GPUs each task asks for (fractional: 0.25 lets four "
                                "small models share a GPU; default 1 when the cluster has GPUs, else 0).")] = None,
    storage: Annotated[Optional[str], typer.Option(
        "--storage", help="Where checkpoints are written (overrides the study key `storage`): a folder or a URI "
                          "such as s3://bucket/study that every node reaches; default the --out folder.")] = None,
    plan: Annotated[bool, typer.Option(
        "--plan", help="Print the grid (methods, sparsities and rates, attacks), the training budget, the "
                       "critical path and the estimated wall time (on --workers workers), and exit without running "
                       "anything.")] = False,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", help="With --plan: the number of GPUs or CPUs (one task each) to estimate the wall time "
                          "for.")] = None,
) -> None:
    """Run a study grid (the main job with no arguments); a second run reuses finished work.

    A cell (one model's training, pruning or evaluation) that fails is stored with its error and listed in the
    report, and the study goes on with every cell that does not depend on it; the command then ends with exit status
    1 and a summary line (a rerun retries the failed cells). A user error found before any work starts stops at once
    with exit status 2."""
    from robustprune.precision import check_precision
    from robustprune.study import load_study_spec, run_study

    if cpus_per_task <= 0 or cpus_per_task != cpus_per_task:
        raise ConfigError(f"--cpus-per-task must be > 0, got {cpus_per_task:g}")
    if gpus_per_task is not None and not gpus_per_task >= 0:
        raise ConfigError(f"--gpus-per-task must be >= 0 (fractional allowed, e.g. 0.25), got {gpus_per_task:g}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    overrides: dict[str, Any] = {"data_dir": str(data_dir) if data_dir else None, "compile": compile_,
                                 "storage": storage}
    if precision is not None:
        overrides["precision"] = check_precision(precision, what="--precision")
    spec = load_study_spec(spec_file, overrides)
    if plan:
        from robustprune.study.plan import plan_lines
        from robustprune.study.runner import StudyRunner

        for line in plan_lines(spec, workers=workers):
            _echo(line)
        for why in StudyRunner(spec, out).unused_option_warnings():  # said by --plan as by the run
            _warn(why)
        return
    check_writable_dir(out, "--out folder")
    if spec.storage and "://" not in spec.storage:  # a local checkpoint folder: writable before any work
        check_writable_dir(spec.storage, "--storage folder" if storage else "storage folder (study key storage)")
    if ray_address is not None and ray_address not in ("auto", "local") and not re.fullmatch(
            r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+", ray_address):
        raise ConfigError(f"--ray-address {ray_address!r} is not a Ray address: give auto, HOST:PORT (e.g. "
                          "10.0.0.5:6379) or ray://HOST:10001")
    from robustprune.data import get_spec
    from robustprune.data.formats import resolve_folder

    for ds in spec.datasets:  # the data is where the study says, before any work (the message says what is missing)
        resolve_folder(get_spec(ds), spec.data_dir)
    _echo(f"study {spec.name!r} -> {out}")
    command = ["robustprune", *sys.argv[1:]]
    if ray or ray_address:
        from robustprune.study.ray_runner import run_study_ray

        outcome = run_study_ray(spec, out, address=ray_address, device=device, log=_echo, command=command,
                                cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    else:
        outcome = run_study(spec, out, device=device, log=_echo, progress=False if quiet else None, command=command)
    _echo(f"done in {outcome.wall_time:.0f}s: {outcome.models_trained} models trained, {outcome.models_reused} reused, "
          f"{outcome.rows_written} result rows written")
    for f in outcome.report_files:
        _echo(f"report: {f}")
    summary = outcome.summary()
    if summary is not None:  # failed cells: stored and reported; exit 1 (2 is a user error before any work)
        typer.echo(f"error: {summary}", err=True)
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to export (.safetensors).")],
    format_: Annotated[str, typer.Option("--format", help="onnx, torchscript or exported-program.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(
        help="File to write (default: the checkpoint's name with .onnx / .pt / .pt2); FILE.json (verification, "
             "sizes, latency, provenance) and FILE.md (model card) are written beside it.")] = None,
    slim: Annotated[bool, typer.Option(
        "--slim/--no-slim", help="Cut units removed entirely (filters, channels, gates) out of the layers first; "
                                 "unstructured zeros stay zeros.")] = True,
    sparse: Annotated[bool, typer.Option(
        "--sparse", help="onnx only: store weights with at most 1/3 non-zero entries as sparse tensors (smaller "
                         "file; ONNX Runtime densifies them when it loads).")] = False,
    n: Annotated[int, typer.Option(help="Test images the export is verified on (the first n of the test split).")
                 ] = 1000,
    eps: Annotated[Optional[str], typer.Option(help="L-inf budget of the APGD examples (default: the dataset's).",
                                               callback=_check_eps)] = None,
    attack_steps: Annotated[int, typer.Option(help="APGD iterations (APGD-CE, then APGD-T per target).")] = 50,
    base: Annotated[Optional[Path], typer.Option(
        help="The unpruned model's checkpoint, for the side-by-side sizes and latencies (default: the base its "
             "provenance names, when that file is present).")] = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure latency at batch 1 and 64.")
                       ] = True,
    model_factory: Annotated[Optional[str], typer.Option(
        "--model", help="package.module:factory building your own model (for a checkpoint of a custom model).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attack's random starts.", min=0)] = 0,
    data_dir: DataDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export a checkpoint for deployment and prove the file keeps what was measured: its own runtime gives the
    checkpoint's logits and the same accuracy on the checkpoint's APGD examples (within 0.2 points), else nothing is
    written. Also measures what it saves (parameters, MACs, file size, latency against the unpruned base)."""
    from robustprune.checkpoint import checkpoint_dataset, load_checkpoint
    from robustprune.data import load_splits
    from robustprune.deploy.formats import check_format_available
    from robustprune.deploy import export
    from robustprune.study.exports import checkpoint_provenance

    fmt = check_format_available(format_)  # unknown format / missing extra: one line before any work
    if sparse and not fmt.sparse_ok:
        raise ConfigError(f"--sparse is only for --format onnx (sparse initializers); {fmt.name} stores weights "
                          "densely")
    if n < 1:
        raise ConfigError(f"--n must be at least 1 (got {n})")
    if attack_steps < 1:
        raise ConfigError(f"--attack-steps must be at least 1 (got {attack_steps})")
    target = out if out is not None else checkpoint.with_suffix(fmt.suffix)
    for f in (target, Path(str(target) + ".json"), Path(str(target) + ".md")):
        check_writable_file(f, "--out file")
    user_model = _user_model(model_factory) if model_factory else None
    model, meta, masks = load_checkpoint(checkpoint, "cpu", model=user_model)
    _refuse_nonfinite(model, checkpoint)
    prov, base_path = checkpoint_provenance(checkpoint, meta, model=model, masks=masks)  # claims vs the weights
    if base is not None:
        from robustprune.study.exports import check_base_file

        note = check_base_file(checkpoint, meta, base)  # itself / another architecture: one line, before any work
        if note:
            _warn(note)
        base_path = base
    base_model = base_masks = None
    if base_path is not None and Path(base_path).resolve() != checkpoint.resolve():
        base_model, _bm, base_masks = load_checkpoint(
            base_path, "cpu", model=_user_model(model_factory) if model_factory else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustPruneWarning)
        splits = load_splits(checkpoint_dataset(meta, checkpoint), data_dir=data_dir, val_size=0, device="cpu",
                             test_limit=n)
    n = min(n, len(splits.test))
    budget = parse_eps(eps) if eps is not None else splits.spec.eps_linf
    if not quiet:
        _echo(f"exporting {checkpoint} to {fmt.name} ({target}); verifying on {n} test images of "
              f"{splits.spec.name} and their APGD examples (eps {budget:g}, {attack_steps} steps)"
              + (f"; base for comparison: {base_path}" if base_model is not None else ""))
    res = export(model, target, format=fmt.name, data=(splits.test.x[:n], splits.test.y[:n]), eps=budget,
                 attack_steps=attack_steps, masks=masks, slim="auto" if slim else False, sparse=sparse,
                 base=base_model, base_masks=base_masks, provenance=prov, latency=latency, seed=seed,
                 log=None if quiet else _echo)
    r = res.report
    ver, dep = r["verification"], r["sizes"]["deployed"]
    _echo(f"wrote {res.path} ({dep['file_bytes'] / 1e6:.3f} MB), {res.json_path.name}, "
          f"{res.card_path.name if res.card_path else ''}".rstrip(", "))
    _echo(f"verified by {ver['runtime']}: logits within {ver['max_abs_logit_diff']:.2g} (tolerance "
          f"{ver['logit_tolerance']:.2g}), same class on {100 * ver['prediction_agreement']:.1f} % of {ver['n']}; "
          f"accuracy on the checkpoint's APGD examples {100 * ver['robust_acc_export']:.2f} % (checkpoint "
          f"{100 * ver['robust_acc_model']:.2f} %)")
    if r["slim"].get("applied"):
        _echo(f"removed {r['slim']['removed']} units physically: {r['sizes']['model']['macs_dense']:,} -> "
              f"{dep['macs_dense']:,} dense MACs")
    lat = r.get("latency") or {}
    if lat.get("ms"):
        _echo("latency (ms, batch 1 / 64): " + "; ".join(f"{k} {v['b1']:.3f} / {v['b64']:.3f}"
                                                        for k, v in lat["ms"].items()))


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="A study's output folder.")],
    export: Annotated[Optional[list[str]], typer.Option(
        "--export", help="First export every model of the study to this format (onnx, torchscript, "
                         "exported-program; repeat for several), verified, and add the deployment table.")] = None,
    data_dir: DataDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not list the files written.")] = False,
) -> None:
    """(Re)write the report of a study folder from its results database (with --export: export its models first)."""
    from robustprune.study import write_report

    summary = None
    if out.is_file():  # not "run `study --out FILE`": a file is never a study folder
        what = {".safetensors": f"a checkpoint (evaluate it: robustprune evaluate {out})",
                ".yaml": f"a study file (run it: robustprune study {out} --out DIR; then robustprune report DIR)",
                ".yml": f"a study file (run it: robustprune study {out} --out DIR; then robustprune report DIR)",
                ".sqlite": f"a database: pass the folder that holds it, {out.parent}"}.get(out.suffix, "a file")
        raise ConfigError(f"report OUT takes a study's output folder (the --out of `robustprune study`); {out} is "
                          f"{what}")
    if data_dir is not None and not export:
        raise ConfigError("--data-dir is used only with --export (the report itself reads only the database); "
                          "drop it, or add --export onnx")
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} does not exist; give the folder with the study's dataset files")
    if export:
        from robustprune.deploy.formats import check_format_available
        from robustprune.study.exports import export_study, export_summary
        from robustprune.study.store import ResultsStore

        formats = [check_format_available(f).name for f in export]
        with ResultsStore(out / "results.sqlite", readonly=True):
            pass  # a missing or foreign database: its one-line error before any work
        counts = export_study(out, formats, data_dir=str(data_dir) if data_dir else None,
                              log=(lambda _m: None) if quiet else _echo)
        _echo(f"exports: {counts['exported']} written, {counts['reused']} reused, {counts['failed']} failed")
        summary = export_summary(out)
    for f in write_report(out):
        if not quiet:
            _echo(f"wrote {f}")
    if summary is not None:
        typer.echo(f"error: {summary}", err=True)
        raise typer.Exit(1)


from robustprune.cli import data_cmd as _data_cmd, import_cmd as _import_cmd  # noqa: E402  (one module per command)

app.command("import")(_import_cmd.import_command)
app.add_typer(_data_cmd.app, name="data")

INTERRUPTED = "interrupted; finished work is kept"
"""What Ctrl-C prints (exit status 130): checkpoints, rows and study cells written before it stay valid."""


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    """Warnings meant for the user (``RobustPruneWarning``) as one ``warning: ...`` line; others as usual."""
    if isinstance(category, type) and issubclass(category, RobustPruneWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """The parser's usage-error classes (typer vendors click; a plain click may be installed too)."""
    types = [c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"]
    try:
        import click

        types.append(click.exceptions.UsageError)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(dict.fromkeys(types))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2; Ctrl-C exits 130 with one line."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    usage_errors = _usage_error_types()
    try:
        rc = app(standalone_mode=False)
    except RobustPruneError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except usage_errors as exc:  # a value the parser could not take (e.g. --epochs abc): one line, exit 2
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            typer.echo(exc.ctx.get_help())
            sys.exit(2)
        cmd = exc.ctx.command_path if exc.ctx is not None else "robustprune"
        msg = " ".join(exc.format_message().split())
        typer.echo(f"error: {msg} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except _Interrupted as exc:  # a command that says itself what an interrupt kept
        typer.echo(str(exc), err=True)
        sys.exit(130)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # typer's conversion of a KeyboardInterrupt inside a command
            typer.echo(INTERRUPTED, err=True)
        raise
    finally:
        warnings.showwarning = previous
    if rc == 130:  # typer's conversion of a KeyboardInterrupt inside a command, returned in non-standalone mode
        typer.echo(INTERRUPTED, err=True)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
