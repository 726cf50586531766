"""Export a (pruned) model to a deployment format, prove the file computes what was evaluated, measure the saving.

:func:`export` writes three files, or none (they are written under temporary names and moved into place only
after every check passed):

* ``FILE`` (``.onnx`` / ``.pt`` / ``.pt2``, :mod:`robustprune.deploy.formats`);
* ``FILE.json``: the verification, the sizes, the latencies and the provenance (:data:`REPORT_FORMAT`);
* ``FILE.md``: the same as a model card a person reads.

**Structure.** Units removed entirely (filters, channels, Linear units, folded gates) are cut out physically first
with :func:`robustprune.sparsity.slim_model` (``slim="auto"``: whenever the model has such units; the slim model is
itself checked against the masked one); unstructured zeros stay zeros (``sparse=True`` stores them compactly in
ONNX).

**Verification** (by the format's own runtime, on the CPU):

1. *Logits*: the artifact and the evaluated model (the checkpoint as loaded, strict fp32) on the first ``n`` test
   images: ``max |logit difference| <= logit_rtol * max(1, max |logit|)`` (default ``logit_rtol = 1e-4``: the float32
   reassociation of another runtime's kernels is ~1e-6 of the logits) and the same predicted class on every image.
2. *Robustness*: APGD-CE + APGD-T examples (Croce2020; the study's settings: 50 steps, 3 targets) crafted on the
   evaluated model at the dataset's budget are fed to the artifact; its accuracy on them must equal the model's
   within ``robust_tol_points`` (0.2) points. Adversarial examples sit on decision boundaries, where an export's
   last-bit differences are most likely to flip a prediction; this is the check that the deployed file keeps the
   robustness that was measured.

A failed check raises :class:`~robustprune.deploy.formats.ExportError` with one line, and nothing is written.

**Saving** (:func:`measure`): parameters, non-zero parameters, dense and effective MACs (one input), file size, and
median latency at batch 1 and 64 in the artifact's runtime and in plain PyTorch; with ``base`` (the unpruned
model), the same for the base, exported to the same format, measured in alternation with the model so that a change
of machine load hits both, and the speed-ups.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.deploy.formats import ExportError, Format, Runner, _first_line, get_format
from robustprune.errors import ConfigError, RobustPruneError
from robustprune.utils import check_logits

REPORT_FORMAT = "robustprune-export/1"
LOGIT_RTOL = 1e-4
ROBUST_TOL_POINTS = 0.2
LATENCY_BATCHES = (1, 64)


@dataclass
class ExportResult:
    """The written artifact and its report (the content of ``FILE.json``)."""

    path: Path
    report: dict[str, Any]
    json_path: Path | None = None
    card_path: Path | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def verification(self) -> dict[str, Any]:
        return self.report["verification"]


# ---- helpers ---------------------------------------------------------------------------------------------------
def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).to("cpu").float().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@torch.no_grad()
def _torch_logits(model: nn.Module, x: Tensor, batch_size: int = 250) -> Tensor:
    from robustprune.precision import evaluation_precision

    out = []
    with evaluation_precision("fp32"):
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size]).float())
    return torch.cat(out)


def _runner_logits(run: Runner, x: Tensor, batch_size: int = 250) -> Tensor:
    return torch.cat([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


_TMP_TAG = ".rpx"
"""Temporary files of an export are ``.NAME.rpx<pid>.XXXX.tmp<suffix>``: the writer's process id tells whether a
leftover belongs to a live export or to one that was killed (removed by the next export to that folder)."""


def _tmp_path(final: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}{_TMP_TAG}{os.getpid()}.",
                               suffix=".tmp" + suffix)
    os.close(fd)
    return Path(tmp)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files an interrupted (killed) export left in ``folder``: those whose writing process no
    longer runs. Returns what was removed."""
    import re

    pat = re.compile(r"^\..+" + re.escape(_TMP_TAG) + r"(\d+)\..*\.tmp")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for f in entries:
        m = pat.match(f.name)
        if m and f.is_file() and not _pid_alive(int(m.group(1))):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


def _warn_suffix(out: Path, fmt: Format) -> None:
    """A file name that ends like another format's file (``--format onnx --out x.pt``): said, not refused."""
    import warnings

    from robustprune.deploy.formats import FORMATS
    from robustprune.errors import RobustPruneWarning

    if out.name.endswith(fmt.suffix):
        return
    other = next((f for f in FORMATS.values() if f.name != fmt.name and out.name.endswith(f.suffix)), None)
    if other is not None:
        warnings.warn(f"--out / out {out.name} ends in {other.suffix}, the suffix of {other.name} files, but the file "
                      f"is {fmt.name}; name it {out.name[: -len(other.suffix)]}{fmt.suffix} or pass --format "
                      f"{other.name}", RobustPruneWarning, stacklevel=3)


def _as_tensor(v: Any, what: str) -> Tensor:
    """A tensor, or a NumPy array converted to one; anything else is a one-line error."""
    import numpy as np

    if isinstance(v, Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise ConfigError(f"{what} must be a torch tensor (or a NumPy array), got {type(v).__name__}")


def _checked_data(data: Any) -> tuple[Tensor, Tensor]:
    """``data=(images, labels)``: float NCHW images in [0, 1], finite, one integer label >= 0 per image (the
    checks of every training entry); NumPy arrays are converted."""
    from robustprune.data import check_split

    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ConfigError(f"data must be a tuple (images, labels), got {type(data).__name__}")
    x, y = _as_tensor(data[0], "data images"), _as_tensor(data[1], "data labels")
    check_split(x, y, "data")
    return x.detach().to("cpu", torch.float32), y.detach().to("cpu").long()


def _check_base(model: nn.Module, base: nn.Module, x: Tensor) -> None:
    """``base`` must be the same architecture as ``model`` (the same parameter and buffer names; the same shapes
    unless ``model`` is slim) taking the same inputs and giving as many logits; else a one-line error."""
    ms = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bs = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    why = ""
    if set(ms) != set(bs):
        only_b = sorted(set(bs) - set(ms))
        only_m = sorted(set(ms) - set(bs))
        why = (f"it has {only_b[0]!r}, which the model lacks" if only_b else f"it lacks the model's {only_m[0]!r}")
    elif not getattr(model, "rp_slim", False):
        diff = next((k for k in ms if ms[k] != bs[k]), None)
        if diff is not None:
            why = f"its {diff!r} is {bs[diff]}, the model's {ms[diff]}"
    if not why:
        b = _cpu_eval_copy(base)
        try:
            nb = check_logits(b, x, "base", "the model's inputs")
        except ConfigError as exc:
            raise ConfigError(f"base is not this model's unpruned architecture: {exc}") from None
        nm = check_logits(model, x, "model", "data")
        if nb != nm:
            why = f"it gives {nb} logits, the model {nm}"
    if why:
        raise ConfigError(f"base is not this model's unpruned architecture ({why}), so its sizes and latencies "
                          "compare nothing; give the model it was pruned from (CLI: --base)")


def slim_for_export(model: nn.Module, masks: Any = None, example: Tensor | None = None) -> tuple[nn.Module, dict]:
    """The model with every entirely removed unit cut out (:func:`robustprune.sparsity.slim_model`; the slim
    model's logits are checked against ``model``'s), and ``{"units": {layer: [kept, total]}, "removed": int}``.
    Returns ``model`` itself when no unit is removed."""
    from robustprune.sparsity.slim import slim_model

    mask_map = dict(getattr(masks, "masks", masks) or {})
    try:
        res = slim_model(model, masks=mask_map, example=example)
    except RobustPruneError as exc:
        raise ExportError(f"cannot remove the pruned units physically ({exc}); export with --no-slim (slim=False) "
                          "to keep them as zeros") from None
    removed = sum(t - k for k, t in res.units.values()) + sum(t - k for k, t in res.inputs.values())
    info = {"units": {k: [int(a), int(b)] for k, (a, b) in res.units.items()}, "removed": int(removed),
            "units_string": res.units_string() if res.order else "", "max_abs_diff": res.max_abs_diff}
    if removed == 0:
        return model, info
    return res.model, info


def _diagnose(model: nn.Module, example: Tensor, fmt: Format, error: BaseException) -> ExportError:
    """Find the first layer that the format cannot export on its own (custom modules first), for the one-line error."""
    inputs: dict[str, Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            def hook(_m, args, _out, name=name):
                if name not in inputs and len(args) == 1 and isinstance(args[0], Tensor):
                    inputs[name] = args[0].detach()
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # noqa: BLE001 - the model does not even run: report the original error
        pass
    finally:
        for h in handles:
            h.remove()
    mods = dict(model.named_modules())
    # the user's own layers first: a torch.nn layer is the less likely culprit
    order = sorted(inputs, key=lambda n: type(mods[n]).__module__.startswith("torch.nn"))
    with tempfile.TemporaryDirectory() as d:
        for name in order:
            try:
                fmt.write(mods[name], inputs[name], Path(d) / f"layer{fmt.suffix}", False)
            except Exception as exc:  # noqa: BLE001
                return ExportError(
                    f"layer {name!r} ({type(mods[name]).__name__}) cannot be exported to {fmt.name}: "
                    f"{_first_line(exc)}; write it with standard torch operations (or export another format)")
    return ExportError(f"the model cannot be exported to {fmt.name} ({_first_line(error)}); every layer exports on "
                       "its own, so the failing operation is in a forward() itself: use standard torch operations "
                       "there (no Python control flow on tensor values, no NumPy), or export another format")


def _write_artifact(model: nn.Module, example: Tensor, path: Path, fmt: Format, sparse: bool) -> dict[str, Any]:
    try:
        return fmt.write(model, example, path, sparse)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one line naming the layer
        raise _diagnose(model, example, fmt, exc) from None


# ---- verification ----------------------------------------------------------------------------------------------
def verify_export(path: str | Path, model: nn.Module, x: Tensor, y: Tensor | None = None, *,
                  format: str | None = None, x_adv: Tensor | None = None, logit_rtol: float = LOGIT_RTOL,
                  robust_tol_points: float = ROBUST_TOL_POINTS, threads: int | None = None,
                  raise_on_failure: bool = True) -> dict[str, Any]:
    """Load the artifact at ``path`` with its own runtime and compare it with ``model`` (module docstring):
    logits and predictions on ``x``; with ``x_adv`` (and ``y``) the accuracy on the adversarial examples.
    Returns the measured figures and ``passed``; raises :class:`ExportError` (one line) when a check fails and
    ``raise_on_failure``."""
    path = Path(path)
    fmt = get_format(format or _format_of(path))
    run = fmt.load(path, int(threads or torch.get_num_threads()))
    ref_model = _cpu_eval_copy(model)
    x = x.detach().to("cpu", torch.float32)
    ref = _torch_logits(ref_model, x)
    got = _runner_logits(run, x)
    if got.shape != ref.shape:
        return _fail(raise_on_failure, path, f"its logits have shape {tuple(got.shape)}, the model's "
                                             f"{tuple(ref.shape)}", {"passed": False})
    scale = max(1.0, float(ref.abs().max()))
    diff = float((got - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    out: dict[str, Any] = {"n": int(len(x)), "runtime": fmt.runtime, "max_abs_logit_diff": diff,
                           "logit_tolerance": logit_rtol * scale, "logit_rtol": logit_rtol,
                           "prediction_agreement": agree}
    problems = []
    if not diff <= logit_rtol * scale:
        problems.append(f"its logits differ from the model's by {diff:.3g} (> {logit_rtol * scale:.3g})")
    if agree < 1.0:
        problems.append(f"it predicts another class on {round((1 - agree) * len(x))} of {len(x)} images")
    if y is not None:
        y = y.detach().to("cpu")
        out["clean_acc_model"] = float((ref.argmax(1) == y).float().mean())
        out["clean_acc_export"] = float((got.argmax(1) == y).float().mean())
    if x_adv is not None and y is not None:
        xa = x_adv.detach().to("cpu", torch.float32)
        ra, ga = _torch_logits(ref_model, xa), _runner_logits(run, xa)
        rm, re_ = float((ra.argmax(1) == y).float().mean()), float((ga.argmax(1) == y).float().mean())
        out.update(robust_acc_model=rm, robust_acc_export=re_, robust_diff_points=100.0 * abs(rm - re_),
                   robust_tol_points=robust_tol_points, adv_max_abs_logit_diff=float((ga - ra).abs().max()),
                   adv_prediction_agreement=float((ga.argmax(1) == ra.argmax(1)).float().mean()))
        if not 100.0 * abs(rm - re_) <= robust_tol_points:
            problems.append(f"its accuracy on the model's adversarial examples is {100 * re_:.2f} %, the model's "
                            f"{100 * rm:.2f} % (more than {robust_tol_points:g} points apart)")
    out["passed"] = not problems
    if problems:
        return _fail(raise_on_failure, path, "; ".join(problems), out)
    return out


def _fail(raise_on_failure: bool, path: Path, why: str, out: dict[str, Any]) -> dict[str, Any]:
    out["passed"] = False
    out["problem"] = why
    if raise_on_failure:
        raise ExportError(f"the exported file does not compute what was evaluated: {why}; nothing was kept "
                          f"({path.name}); report this with the model, or export another format")
    return out


def _format_of(path: Path) -> str:
    from robustprune.deploy.formats import FORMATS

    for f in FORMATS.values():
        if path.name.endswith(f.suffix):
            return f.name
    raise ConfigError(f"cannot tell the format of {path} from its suffix; pass format= "
                      f"({', '.join(FORMATS)})")


def adversarial_examples(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = 50,
                         n_target_classes: int = 3, seed: int = 0, batch_size: int = 250) -> Tensor:
    """APGD-CE then APGD-T (in-house Croce2020, the study's evaluation attack) on ``model`` in strict fp32."""
    from robustprune.attacks import apgd
    from robustprune.precision import evaluation_precision

    m = _cpu_eval_copy(model)
    g = torch.Generator().manual_seed(int(seed))
    out = []
    with evaluation_precision("fp32"):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to("cpu", torch.float32), y[i:i + batch_size].to("cpu")
            out.append(apgd(m, xb, yb, eps=float(eps), steps=int(steps),
                            n_target_classes=min(int(n_target_classes), _num_classes(m, xb) - 1), generator=g))
    return torch.cat(out)


@torch.no_grad()
def _num_classes(model: nn.Module, x: Tensor) -> int:
    return int(model(x[:1]).shape[1])


# ---- measurement -----------------------------------------------------------------------------------------------
def _median_ms(fn: Any, x: Tensor, min_time: float) -> float:
    for _ in range(3):
        fn(x)
    times: list[float] = []
    t_end = time.perf_counter() + float(min_time)
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure_latency(runners: Mapping[str, Any], input_shape: tuple[int, ...], *,
                    batches: tuple[int, ...] = LATENCY_BATCHES, min_time: float = 0.3, rounds: int = 3,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """``{label: {"b1": ms, "b64": ms}}``: median wall time of one call of each runner (a callable on a float32
    CPU batch), measured in ``rounds`` alternating rounds (a change of machine load hits every runner), the median
    over rounds of each round's median."""
    g = torch.Generator().manual_seed(seed)
    xs = {b: torch.rand((b, *input_shape), generator=g) for b in batches}
    got: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in runners}
    with torch.inference_mode():
        for _ in range(max(1, int(rounds))):
            for b in batches:
                for k, fn in runners.items():
                    got[k][b].append(_median_ms(fn, xs[b], min_time / max(1, int(rounds))))
    return {k: {f"b{b}": statistics.median(v[b]) for b in batches} for k, v in got.items()}


def model_sizes(model: nn.Module, input_shape: tuple[int, ...], masks: Any = None) -> dict[str, int]:
    """Parameters, non-zero parameters, dense and effective MACs (one input) of ``model``."""
    from robustprune.metrics.complexity import count_params, flops

    p = count_params(model, masks)
    f = flops(model, input_shape, masks)
    return {"params": int(p["total"]), "params_nonzero": int(p["nonzero"]), "macs_dense": int(f["dense"]),
            "macs_effective": int(f["effective"])}


def _torch_runner(model: nn.Module) -> Any:
    def run(x: Tensor) -> Tensor:
        return model(x)

    return run


# ---- export ----------------------------------------------------------------------------------------------------
def export(
    model: nn.Module,
    out: str | Path,
    *,
    format: str = "onnx",
    data: tuple[Tensor, Tensor] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    masks: Any = None,
    slim: bool | str = "auto",
    sparse: bool = False,
    eps: float | None = None,
    attack_steps: int = 50,
    attack_targets: int = 3,
    x_adv: Tensor | None = None,
    base: nn.Module | None = None,
    base_masks: Any = None,
    base_file: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    latency: bool = True,
    latency_time: float = 0.3,
    logit_rtol: float = LOGIT_RTOL,
    robust_tol_points: float = ROBUST_TOL_POINTS,
    seed: int = 0,
    card: bool = True,
    log: Any = None,
) -> ExportResult:
    """Export ``model`` to ``out`` in ``format`` and verify it (module docstring); returns an :class:`ExportResult`.

    ``data``: test images in [0, 1] (NCHW, float) and labels for the verification (all of them are used; pass the
    first N). Without ``data`` only random inputs check the logits (``verification.data = "random"``) and no
    robustness is verified. ``eps``: the L-inf budget of the APGD examples (required with ``data`` unless
    ``x_adv`` gives the examples). ``masks``: the model's masks (a ``MaskSet``), used to count non-zero weights and
    to slim. ``slim``: "auto" (cut out entirely removed units when there are any), True (the same, and say so when
    there are none) or False. ``base``: the unpruned model for the side-by-side sizes and latencies (``base_file``:
    its export in the same format, when there is one already; else it is exported to a temporary file).
    ``provenance``: what made the model (method, paper, settings, rate, hashes, measured accuracy), copied into
    the report. ``latency=False`` skips the timings (tests)."""
    from robustprune.utils import check_flag, check_number, check_writable_file

    fmt = get_format(format)
    sparse, latency, card = (check_flag(v, w) for v, w in ((sparse, "sparse"), (latency, "latency"), (card, "card")))
    if sparse and not fmt.sparse_ok:
        raise ConfigError(f"--sparse is only for onnx (sparse initializers); {fmt.name} stores every weight densely")
    if isinstance(slim, str) and slim != "auto" or slim not in ("auto", True, False) or \
            not isinstance(slim, (str, bool)):
        raise ConfigError(f"slim must be 'auto', True or False, got {slim!r}")
    # every number before any work (the artifact used to be written before eps / attack_steps were looked at)
    if eps is not None:
        eps = check_number(eps, "eps (the L-inf budget of the APGD examples)", low=0, high=1, low_open=True)
    attack_steps = check_number(attack_steps, "attack_steps", integer=True, low=1)
    attack_targets = check_number(attack_targets, "attack_targets", integer=True, low=1)
    latency_time = check_number(latency_time, "latency_time", low=0, low_open=True)
    logit_rtol = check_number(logit_rtol, "logit_rtol", low=0, low_open=True)
    robust_tol_points = check_number(robust_tol_points, "robust_tol_points", low=0, high=100)
    seed = check_number(seed, "seed", integer=True, low=0)
    out = Path(out)
    check_writable_file(out, "export file")
    say = log or (lambda _m: None)
    _warn_suffix(out, fmt)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    evaluated = _cpu_eval_copy(model)
    if data is not None:
        x, y = _checked_data(data)
        if x_adv is None and eps is None:
            raise ConfigError("export with data needs eps= (the L-inf budget of the APGD examples), or x_adv=")
        shape = tuple(int(s) for s in x.shape[1:])
    else:
        if input_shape is None:
            raise ConfigError("export needs data=(images, labels) or input_shape=(C, H, W)")
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape):
            raise ConfigError(f"input_shape must be (C, H, W), three positive integers, got {input_shape!r}")
        shape = tuple(int(s) for s in input_shape)
        x = torch.rand((64, *shape), generator=torch.Generator().manual_seed(seed))
        y = None
    classes = check_logits(evaluated, x, "model", "data" if data is not None else f"input_shape {shape}")
    if y is not None and int(y.max()) >= classes:
        raise ConfigError(f"data: labels must lie in 0..{classes - 1} (the model has {classes} outputs), got "
                          f"{int(y.min())}..{int(y.max())}")
    if x_adv is not None:
        x_adv = _as_tensor(x_adv, "x_adv")
        if y is None:
            raise ConfigError("x_adv= needs data=(images, labels): the accuracy on the examples needs their labels")
        if tuple(x_adv.shape) != tuple(x.shape):
            raise ConfigError(f"x_adv must hold one adversarial example per image of data, shaped like the images "
                              f"{tuple(x.shape)}; got {tuple(x_adv.shape)}")
        from robustprune.data import check_split

        check_split(x_adv.detach().to("cpu", torch.float32), y, "x_adv")
    if base is not None:
        if not isinstance(base, nn.Module):
            raise ConfigError(f"base must be an nn.Module (the unpruned model), got {type(base).__name__}")
        _check_base(evaluated, base, x)
    _remove_stale_temporaries(out.parent)
    mask_map = dict(getattr(masks, "masks", masks) or {})
    if masks is not None and mask_map:
        from robustprune.sparsity import MaskSet

        ms = masks if isinstance(masks, MaskSet) else MaskSet({k: torch.as_tensor(v).bool() for k, v in
                                                               mask_map.items()})
        ms.to("cpu").apply(evaluated)

    # 1. structure: cut out the removed units
    deployed, slim_info = evaluated, {"applied": False, "removed": 0}
    if slim:
        deployed, info = slim_for_export(evaluated, mask_map, example=x[:64])
        slim_info = {**info, "applied": deployed is not evaluated}
        if slim is True and not slim_info["applied"]:
            say("no unit is removed entirely: nothing to slim (unstructured zeros stay zeros)")
    deployed.eval()

    # 2. write under temporary names
    tmp = _tmp_path(out, fmt.suffix)
    tmps = [tmp]
    try:
        t0 = time.perf_counter()
        info = _write_artifact(deployed, x[:2].clone() if len(x) >= 2 else x.repeat(2, 1, 1, 1), tmp, fmt, sparse)
        export_s = time.perf_counter() - t0
        sparse_weights = sum(1 for mod in deployed.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))
                             and 3 * int(torch.count_nonzero(mod.weight)) <= mod.weight.numel())
        if sparse and not sparse_weights:
            import warnings

            from robustprune.errors import RobustPruneWarning

            warnings.warn("--sparse (sparse=True): no weight tensor has at most a third of its entries non-zero (the "
                          "model has no unstructured zeros to store compactly), so the file is dense; drop --sparse",
                          RobustPruneWarning, stacklevel=2)
        # 3. verify with the format's own runtime
        if data is not None and x_adv is None:
            t1 = time.perf_counter()
            x_adv = adversarial_examples(evaluated, x, y, eps=eps, steps=attack_steps,
                                         n_target_classes=attack_targets, seed=seed)
            say(f"APGD examples crafted on the model ({len(x)} images, eps {eps:g}) in {time.perf_counter() - t1:.1f}s")
        ver = verify_export(tmp, evaluated, x, y, format=fmt.name, x_adv=x_adv if y is not None else None,
                            logit_rtol=logit_rtol, robust_tol_points=robust_tol_points)
        ver["data"] = "test" if data is not None else "random"
        if data is not None:
            ver["attack"] = {"name": "apgd", "eps": eps, "steps": attack_steps, "n_target_classes": attack_targets,
                             "seed": seed, "crafted_on": "the evaluated model (strict fp32, PyTorch)"}
        # 4. what it saves
        sizes = {"model": {**model_sizes(evaluated, shape, mask_map or None)},
                 "deployed": {**model_sizes(deployed, shape), "file_bytes": tmp.stat().st_size}}
        runners: dict[str, Any] = {}
        lat: dict[str, Any] = {}
        base_tmp = None
        if base is not None:
            base_eval = _cpu_eval_copy(base)
            if base_masks is not None:
                base_masks.to("cpu").apply(base_eval)
            if base_file is not None and Path(base_file).is_file():
                base_tmp = Path(base_file)  # the base's own verified export in this format
            else:
                base_tmp = _tmp_path(out, ".base" + fmt.suffix)
                tmps.append(base_tmp)
                _write_artifact(base_eval, x[:2].clone() if len(x) >= 2 else x.repeat(2, 1, 1, 1), base_tmp, fmt,
                                False)
            sizes["base"] = {**model_sizes(base_eval, shape, base_masks), "file_bytes": base_tmp.stat().st_size}
        if latency:
            threads = torch.get_num_threads()
            runners[f"{fmt.runtime}"] = fmt.load(tmp, threads)
            runners["pytorch"] = _torch_runner(deployed)
            if base is not None and base_tmp is not None:
                runners[f"base {fmt.runtime}"] = fmt.load(base_tmp, threads)
                runners["base pytorch"] = _torch_runner(base_eval)
            lat = measure_latency(runners, shape, min_time=latency_time, seed=seed)
            lat = {"ms": lat, "threads": threads, "device": "cpu", "min_time_s": latency_time,
                   "method": "median of 3 alternating rounds of per-call medians"}
            if base is not None:
                lat["speedup"] = {f"{rt} {k}": lat["ms"][f"base {rt}"][k] / lat["ms"][rt][k]
                                  for rt in (fmt.runtime, "pytorch") for k in (f"b{b}" for b in LATENCY_BATCHES)}
        report: dict[str, Any] = {
            "format": REPORT_FORMAT, "export_format": fmt.name, "file": out.name, "runtime": fmt.runtime,
            "exporter": info, "export_seconds": export_s, "torch": torch.__version__,
            "input": {"name": "images", "shape": ["batch", *shape], "dtype": "float32", "range": [0.0, 1.0],
                      "normalisation": "inside the graph"},
            "output": {"name": "logits"}, "slim": slim_info,
            "sparse": bool(sparse and sparse_weights), "sparse_requested": bool(sparse),
            "verification": ver, "sizes": sizes, "latency": lat,
            "provenance": dict(provenance or {}), "created_at": time.time(),
        }
        _add_ratios(report)
        json_tmp = _tmp_path(out, ".json")
        tmps.append(json_tmp)
        json_tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        card_tmp = None
        if card:
            from robustprune.deploy.card import model_card

            card_tmp = _tmp_path(out, ".md")
            tmps.append(card_tmp)
            card_tmp.write_text(model_card(report))
        # 5. land: the artifact last, so a FILE without its FILE.json never appears half-verified
        json_path, card_path = Path(str(out) + ".json"), Path(str(out) + ".md")
        os.replace(json_tmp, json_path)
        files = [json_path]
        if card_tmp is not None:
            os.replace(card_tmp, card_path)
            files.append(card_path)
        os.replace(tmp, out)
        files.insert(0, out)
    except BaseException:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise
    finally:
        for t in tmps[1:]:
            t.unlink(missing_ok=True)
    return ExportResult(path=out, report=report, json_path=json_path, card_path=card_path if card else None,
                        files=files)


def _add_ratios(report: dict[str, Any]) -> None:
    s = report["sizes"]
    d, m = s["deployed"], s["model"]
    r: dict[str, float] = {"macs_dense_saved_by_slim": m["macs_dense"] / d["macs_dense"] if d["macs_dense"] else 0.0}
    b = s.get("base")
    if b:
        r.update(
            file_size=b["file_bytes"] / d["file_bytes"],
            params=b["params"] / d["params"],
            params_nonzero=b["params_nonzero"] / max(1, d["params_nonzero"]),
            macs_dense=b["macs_dense"] / max(1, d["macs_dense"]),
            macs_effective=b["macs_effective"] / max(1, d["macs_effective"]),
        )
    report["ratios_vs_base"] = r
