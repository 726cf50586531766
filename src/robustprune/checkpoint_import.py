"""Import: another tool's weights file -> an ordinary robustprune checkpoint, checked on the data before it is kept.

The edge of the library (docs: "imports are converters at the edge"): :func:`import_model` reads a ``.pt`` /
``.pth`` / ``.bin`` (``torch.save``) or ``.safetensors`` file without ever unpickling code
(``torch.load(weights_only=True)``: a file that needs pickled Python objects, e.g. a whole ``nn.Module``, is refused
in one line), finds the state dict inside the usual containers (``state_dict``, ``model_state_dict``, ``model``,
``net``, ``ema``), strips the ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (``torch.compile``) prefixes,
renames the tensors of the zoos' layouts (:mod:`robustprune.models.keymaps`), takes the input normalisation from the
file when it holds one (``mu``/``sigma``, ``mean``/``std`` buffers or container fields), else from ``mean=/std=``,
else the dataset's, and loads the result into a registry architecture (``arch=``) or the user's own model
(``model=``). Anything that does not fit is one :class:`CheckpointError` line naming the first tensor (its name and
both shapes).

It then measures the model instead of trusting it: clean accuracy on the dataset's validation split and APGD-CE +
APGD-T (Croce2020, in-house) robust accuracy on a few hundred of those points, and warns when the clean accuracy is
near chance (wrong normalisation, wrong architecture, labels in another order) or the robust accuracy near zero (not
an adversarially trained model). The checkpoint written is an ordinary one (:func:`~robustprune.checkpoint.
save_checkpoint`); its sidecar keeps the provenance: source file name and SHA-256, container, prefixes, the key map
and every renamed tensor, the normalisation and where it came from, and the two accuracies. Nothing past this module
knows that a model was imported except that record.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.errors import CheckpointError, ConfigError, RobustPruneWarning

SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CONTAINERS = ("state_dict", "model_state_dict", "model", "net", "ema")
"""Container keys searched for the state dict, in this order (the first present wins; ``container=`` picks)."""
PREFIXES = ("module.", "_orig_mod.")
_NORM_PREFIXES = ("", "normalize.", "norm.", "normalization.", "normalizer.", "0.")
_NORM_NAMES = (("mu", "sigma"), ("mean", "std"))


@dataclass
class ImportResult:
    """What :func:`import_model` did: the checkpoint written, its sidecar, the loaded model (eval mode), the
    accuracies it measured and the warnings it gave."""

    path: Path
    meta: dict[str, Any]
    model: nn.Module
    clean: float
    robust: float | None
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- reading
def read_weights(path: str | Path) -> tuple[Any, str]:
    """The object stored in ``path`` and its format (``"safetensors"`` or ``"torch"``), never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; give the .pt / .pth / .bin / .safetensors file to "
                              "import")
    if path.suffix.lower() not in SUFFIXES:
        raise CheckpointError(f"weights file {path} has suffix {path.suffix or '(none)'!r}; import reads "
                              f"{' / '.join(SUFFIXES)} files (torch.save or safetensors); rename it if it is one")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file ({_first_line(exc)}); "
                                  "save it again") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects{what}, which robustprune never unpickles (loading them could run "
            "code); save the weights alone with torch.save(model.state_dict(), PATH) and import that file") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as exc:
        raise CheckpointError(f"weights file {path} cannot be read by torch.load ({_first_line(exc)}); is it a "
                              "complete torch.save file?") from None
    return obj, "torch"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(obj: Any, container: str | None = None, *, where: str = "the file"
                    ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """``(state, path, others)``: the state dict inside ``obj``, the container keys followed to reach it, and the
    other container keys that held one too (e.g. ``ema`` beside ``state_dict``). ``container``: the (dotted) key
    to follow instead of the first of :data:`CONTAINERS`. Non-tensor entries of a state dict (a stray
    ``num_batches`` int) are dropped."""
    if container is not None:
        node, path = obj, []
        for part in container.split("."):
            if not isinstance(node, dict) or part not in node:
                keys = sorted(str(k) for k in node) if isinstance(node, dict) else []
                raise ConfigError(f"--container {container!r}: {where} has no key {part!r}"
                                  + (f" (keys there: {', '.join(keys[:8])})" if keys else ""))
            node, path = node[part], [*path, part]
        state, more, _ = find_state_dict(node, where=where)
        return state, path + more, []
    path: list[str] = []
    node = obj
    others: list[str] = []
    while True:
        if _is_state(node):
            return dict(node), path, others
        if isinstance(node, dict):
            tensors = {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            present = [c for c in CONTAINERS if isinstance(node.get(c), dict)]
            if present:
                others += [".".join([*path, c]) for c in present[1:]]
                path.append(present[0])
                node = node[present[0]]
                continue
            if len(tensors) >= max(1, len(node) // 2):  # a state dict with a few non-tensor extras
                return tensors, path, others
            keys = sorted(str(k) for k in node)
            raise CheckpointError(
                f"found no state dict in {where}{' under ' + '.'.join(path) if path else ''}: its keys are "
                f"{', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}; name the one that holds the weights with "
                "--container KEY")
        raise CheckpointError(f"{where} holds a {type(node).__name__}, not a state dict (a dict of tensors); save "
                              "the weights with torch.save(model.state_dict(), PATH)")


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the ``module.`` / ``_orig_mod.`` prefixes carried by every key (also nested, in any order)."""
    stripped: list[str] = []
    changed = True
    while changed and state:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                stripped.append(p)
                changed = True
    return state, stripped


def take_normalization(state: dict[str, torch.Tensor], top: Any, channels: int, keep: set[str] = frozenset()
                       ) -> tuple[dict[str, torch.Tensor], tuple[list[float], list[float], str] | None]:
    """Pop the input normalisation the file holds: buffers ``mu``/``sigma`` or ``mean``/``std`` (top level or under
    ``normalize.`` / ``norm.`` / ``0.`` ...) with one value per input channel (or one), or ``mean``/``std`` fields
    of the container. Returns the state without them and ``(mean, std, where)`` or None. Keys in ``keep`` (the
    target model's own) are left in place."""
    for prefix in _NORM_PREFIXES:
        for m_name, s_name in _NORM_NAMES:
            km, ks = prefix + m_name, prefix + s_name
            if km in state and ks in state and km not in keep:
                m, s = state[km], state[ks]
                if m.is_floating_point() and s.is_floating_point() and m.numel() in (1, channels) \
                        and s.numel() == m.numel():
                    rest = {k: v for k, v in state.items() if k not in (km, ks)}
                    if prefix == "0." and rest and all(k.startswith("1.") for k in rest):
                        rest = {k[2:]: v for k, v in rest.items()}  # nn.Sequential(Normalize, net)
                    vals = (m.flatten().tolist(), s.flatten().tolist())
                    return rest, (vals[0] * (channels // len(vals[0])), vals[1] * (channels // len(vals[1])),
                                  f"the file ({km}, {ks})")
    if isinstance(top, dict):
        src = top.get("normalization") if isinstance(top.get("normalization"), dict) else top
        for m_name, s_name in _NORM_NAMES:
            if m_name not in src or s_name not in src:
                continue
            try:
                m = [float(v) for v in torch.as_tensor(src[m_name]).flatten().tolist()]
                s = [float(v) for v in torch.as_tensor(src[s_name]).flatten().tolist()]
            except (TypeError, ValueError, RuntimeError):
                continue
            if len(m) in (1, channels) and len(s) == len(m):
                return state, (m * (channels // len(m)), s * (channels // len(s)),
                               f"the file ({m_name}, {s_name} fields)")
    return state, None


# -------------------------------------------------------------------------------------------------- fitting
def fit_state(state: dict[str, torch.Tensor], model: nn.Module, *, what: str, src: str, arch: str | None = None,
              key_map: str | None = None) -> dict[str, Any]:
    """Rename ``state`` onto ``model`` (:func:`robustprune.models.keymaps.fit_keys`), check names, shapes and
    values, and load it (strict). Returns the mapping record for the provenance. One-line
    :class:`CheckpointError` naming the first tensor that does not fit."""
    from robustprune.models.keymaps import KEY_MAPS, deepmind_layout, fit_keys, hint_for

    if key_map is not None and key_map != "none" and key_map not in KEY_MAPS:
        raise ConfigError(f"--key-map {key_map!r} is not a key map; choose one of none, {', '.join(KEY_MAPS)}")
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    if arch is not None:  # a registry model holds the normalisation chosen for it (file, --mean/--std, dataset)
        optional |= {"normalize.mean", "normalize.std"}
    fit = fit_keys(state, list(own), optional=optional, only=key_map)
    hint_names = fit.missing + [u for _, u in fit.unexpected] + [k for k, _ in fit.unexpected]
    hint = hint_for(arch, hint_names)
    if not fit.fits and arch is not None and not arch.startswith("dm-") and deepmind_layout(list(state)):
        raise CheckpointError(
            f"{src} has DeepMind's WideResNet / PreActResNet layout (RobustBench's DMWideResNet / DMPreActResNet: "
            f"init_conv, layer.N.block.M, logits), which computes differently from {arch} (Swish, asymmetric "
            "padding); import it with --arch dm-wrn-28-10, dm-wrn-34-10, dm-wrn-34-20, dm-wrn-70-16 or "
            "dm-preact-resnet18")
    via = "" if fit.key_map.name == "none" else f" (tensor names mapped with {fit.key_map.name})"
    if fit.missing:
        more = ""
        if fit.unexpected:
            f0, n0 = fit.unexpected[0]
            more = f"; {len(fit.unexpected)} file tensor(s) have no place, the first {f0!r}" + (
                f" (as {n0!r})" if n0 != f0 else "")
        raise CheckpointError(f"{src} does not fit {what}{via}: the model's tensor {fit.missing[0]!r} has no "
                              f"counterpart in the file ({len(fit.missing)} missing){more}"
                              + (f"; {hint}" if hint else ""))
    if fit.unexpected:
        f0, n0 = fit.unexpected[0]
        raise CheckpointError(f"{src} does not fit {what}{via}: the file's tensor {f0!r}"
                              + (f" (as {n0!r})" if n0 != f0 else "")
                              + f" has no place in the model ({len(fit.unexpected)} such)"
                              + (f"; {hint}" if hint else ""))
    inverse = {v: k for k, v in fit.renamed.items()}
    cast: dict[str, str] = {}
    loaded: dict[str, torch.Tensor] = {}
    for k, ref in own.items():
        if k not in fit.state:
            loaded[k] = ref  # an optional tensor the file lacks (BatchNorm's num_batches_tracked)
            continue
        v = fit.state[k]
        if tuple(v.shape) != tuple(ref.shape):
            name = inverse.get(k, k)
            hint = hint_for(arch, [k])
            raise CheckpointError(
                f"{src} does not fit {what}{via}: tensor {name!r}" + (f" (as {k!r})" if name != k else "")
                + f" has shape {tuple(v.shape)} in the file but {tuple(ref.shape)} in the model"
                + (f"; {hint}" if hint else ""))
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{src}: tensor {inverse.get(k, k)!r} has NaN or infinite values; the model "
                                  "diverged in training and cannot be imported")
        if v.dtype != ref.dtype:
            cast.setdefault(f"{str(v.dtype).replace('torch.', '')} -> {str(ref.dtype).replace('torch.', '')}", k)
            v = v.to(ref.dtype)
        loaded[k] = v
    model.load_state_dict(loaded, strict=True)
    return {"key_map": fit.key_map.name, "key_map_source": fit.key_map.source, "renamed": fit.renamed,
            "dropped_unused": fit.dropped, "filled_from_model": [k for k in own if k not in fit.state],
            "cast": cast}


# --------------------------------------------------------------------------------------------------- checking
def check_accuracy(model: nn.Module, split: Any, *, n_clean: int, n_attack: int, eps: float, steps: int,
                   seed: int = 0, batch_size: int = 250) -> tuple[float, float | None]:
    """Clean accuracy on the first ``n_clean`` points of ``split`` and APGD-CE + APGD-T robust accuracy (L-inf
    ``eps``, ``steps`` iterations, 3 target classes) on the first ``n_attack``; strict fp32, eval mode."""
    from robustprune.attacks import apgd
    from robustprune.precision import evaluation_precision
    from robustprune.train import evaluate_split
    from robustprune.utils import make_generator

    clean = evaluate_split(model, split, n=n_clean, eps=None, steps=1, batch_size=batch_size, seed=seed)["clean"]
    if n_attack <= 0:
        return clean, None
    model.eval()
    x, y = split.x[:n_attack], split.y[:n_attack]
    with torch.no_grad():
        classes = int(model(x[:1]).shape[1])
    g = make_generator(seed, x.device)
    correct = 0
    with evaluation_precision("fp32"), torch.autocast(x.device.type, enabled=False):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            xa = apgd(model, xb, yb, eps=float(eps), steps=int(steps), n_target_classes=max(1, min(3, classes - 1)),
                      generator=g)
            with torch.no_grad():
                correct += int((model(xa).argmax(1) == yb).sum())
    return clean, correct / max(len(x), 1)


def _near_chance(clean: float, classes: int) -> bool:
    chance = 1.0 / classes
    return clean < min(2.0 * chance, chance + 0.1)


# ------------------------------------------------------------------------------------------------------ import
def _stats(values: Sequence[float] | float | str | None, channels: int, what: str) -> list[float] | None:
    if values is None:
        return None
    if isinstance(values, str):
        try:
            values = [float(v) for v in values.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{what} {values!r} is not a number or a comma-separated list such as "
                              "0.4914,0.4822,0.4465") from None
    vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if not vals or any(not math.isfinite(v) for v in vals):
        raise ConfigError(f"{what} must be finite numbers, got {values!r}")
    if len(vals) not in (1, channels):
        raise ConfigError(f"{what} has {len(vals)} values but the dataset's images have {channels} channel(s); give "
                          "one value or one per channel")
    return vals * (channels // len(vals))


def import_model(
    weights: str | Path,
    *,
    dataset: str,
    out: str | Path,
    arch: str | None = None,
    model: nn.Module | str | None = None,
    width: float = 1.0,
    mean: Sequence[float] | float | str | None = None,
    std: Sequence[float] | float | str | None = None,
    container: str | None = None,
    key_map: str | None = None,
    data_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    n_check: int = 1000,
    n_attack: int = 200,
    attack_steps: int = 50,
    eps: float | None = None,
    val_size: int = 5000,
    seed: int = 0,
    command: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> ImportResult:
    """Import ``weights`` (a ``.pt``/``.pth``/``.bin``/``.safetensors`` file) as a robustprune checkpoint ``out``
    (``.safetensors`` + ``.json`` sidecar) for ``dataset``, after measuring it.

    ``arch``: a registry architecture (``robustprune list models``, at ``width``); or ``model``: your own
    ``nn.Module`` instance or ``"package.module:factory"`` (it normalises its inputs itself). ``mean``/``std``: the
    input normalisation when the file holds none (default: the dataset's; ``arch`` only). ``container``: the
    (dotted) key of the state dict inside the file when it is not the first of :data:`CONTAINERS`; ``key_map``: a
    map of :mod:`robustprune.models.keymaps` (or ``"none"``) instead of the best-fitting one. The check: clean
    accuracy on the first ``n_check`` points of the validation split (``val_size`` images carved with seed
    ``seed``, the split ``prune`` will keep out of training), APGD-CE + APGD-T at ``eps`` (default: the dataset's)
    with ``attack_steps`` iterations on the first ``n_attack`` of them (0: no attack). ``log``: where the lines
    go, warnings as ``warning: ...`` lines (default: nowhere, and the warnings are issued as
    :class:`RobustPruneWarning`)."""
    from robustprune.checkpoint import save_checkpoint, sidecar_path
    from robustprune.data import get_spec, load_splits
    from robustprune.data.formats import resolve_folder
    from robustprune.models import MODELS, create_model
    from robustprune.provenance import code_version, file_sha256
    from robustprune.utils import check_writable_file, default_device

    say = log or (lambda _m: None)
    # ---- names and values first, before any file or data is read
    if (arch is None) == (model is None):
        raise ConfigError("give exactly one of --arch NAME (a registry architecture, see `robustprune list models`) "
                          "and --model package.module:factory (your own model)")
    spec = get_spec(dataset)
    channels = spec.shape[0]
    if arch is not None:
        MODELS.get(arch)
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ConfigError(f"--width must be a positive number, got {width!r}")
    mean_v, std_v = _stats(mean, channels, "--mean"), _stats(std, channels, "--std")
    if std_v is not None and any(s <= 0 for s in std_v):
        raise ConfigError(f"--std must be > 0, got {std}")
    if (mean_v is None) != (std_v is None):
        raise ConfigError("give --mean and --std together (the input normalisation is (x - mean) / std)")
    if model is not None and mean_v is not None:
        raise ConfigError("--mean/--std go with --arch; your own model (--model) normalises its inputs itself, in "
                          "its forward")
    for name, v, low in (("--n-check", n_check, 1), ("--n-attack", n_attack, 0), ("--attack-steps", attack_steps, 1),
                         ("--val-size", val_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{name} must be a whole number >= {low}, got {v!r}")
    from robustprune.models.keymaps import KEY_MAPS

    if key_map is not None and key_map != "none" and key_map not in KEY_MAPS:
        raise ConfigError(f"--key-map {key_map!r} is not a key map; choose one of none, {', '.join(KEY_MAPS)}")
    budget = float(spec.eps_linf if eps is None else eps)
    if not 0 < budget <= 1:
        raise ConfigError(f"--eps must lie in (0, 1] (pixel units, e.g. 8/255), got {eps}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors (the checkpoint; its .json sidecar goes beside it)")
    check_writable_file(out, "--out checkpoint")
    check_writable_file(sidecar_path(out), "--out checkpoint's sidecar")
    user_model: nn.Module | None = None
    if isinstance(model, str):
        from robustprune.models.custom import load_factory

        user_model = load_factory(model)()
        arch_name = model
    elif model is not None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model= must be an nn.Module or 'package.module:factory', got {type(model).__name__}")
        user_model = model
        arch_name = f"{type(model).__module__}:{type(model).__qualname__}"
    else:
        arch_name = str(arch).lower()
    resolve_folder(spec, data_dir)  # the dataset is there, before any work
    dev = default_device(str(device) if device is not None else None)

    # ---- the file
    weights = Path(weights)
    src = str(weights)
    obj, fmt = read_weights(weights)
    state, path, others = find_state_dict(obj, container, where=src)
    state, stripped = strip_prefixes(state)
    keep = set(user_model.state_dict()) if user_model is not None else set()
    state, file_norm = take_normalization(state, obj, channels, keep)
    if user_model is None:
        c, h, w = spec.shape
        net = create_model(arch_name, num_classes=spec.num_classes, in_channels=c, input_size=h if h == w else (h, w),
                           width=float(width), mean=tuple(spec.mean), std=tuple(spec.std))
        what = f"architecture {arch_name!r}" + (f" at width {width:g}" if width != 1 else "")
    else:
        net = user_model
        what = f"your {type(net).__name__} ({arch_name})"
    mapping = fit_state(state, net, what=what, src=src, arch=arch_name if user_model is None else None,
                        key_map=key_map)
    if user_model is None:  # the file's, else --mean/--std, else what the zoo's model takes, else the dataset's
        from robustprune.models.keymaps import KEY_MAPS

        zoo = KEY_MAPS.get(mapping["key_map"])
        if file_norm is not None:
            norm_mean, norm_std, norm_src = file_norm
            if mean_v is not None:
                say(f"note: the file holds its normalisation ({norm_src}); --mean/--std are not used")
        elif mean_v is not None:
            norm_mean, norm_std, norm_src = mean_v, std_v, "--mean/--std"
        elif zoo is not None and zoo.raw_pixels:
            norm_mean, norm_std = [0.0] * channels, [1.0] * channels
            norm_src = f"none: {zoo.raw_pixels} (--mean/--std to override)"
        else:
            norm_mean, norm_std, norm_src = list(spec.mean), list(spec.std), f"the dataset's ({spec.name})"
        if any(not v > 0 for v in norm_std):
            raise CheckpointError(f"{src}: the normalisation in {norm_src} has a std <= 0 ({norm_std})")
        with torch.no_grad():
            net.normalize.mean.copy_(torch.tensor(norm_mean).view_as(net.normalize.mean))
            net.normalize.std.copy_(torch.tensor(norm_std).view_as(net.normalize.std))
    else:
        norm_mean, norm_std = [0.0] * channels, [1.0] * channels
        norm_src = "inside the model (its own forward)"
        if file_norm is not None:
            say(f"warning: {src} holds an input normalisation ({file_norm[2]}) that {type(net).__name__} has no "
                "buffers for; it is not used (your model normalises its inputs itself)")
    net.to(dev).eval()
    say(f"read {weights.name}: {len(state)} tensors" + (f" under {'.'.join(path)}" if path else "")
        + (f", prefixes {' '.join(stripped)} stripped" if stripped else "")
        + (f", names mapped with {mapping['key_map']}" if mapping["key_map"] != "none" else "")
        + (f", {len(mapping['dropped_unused'])} unused tensor(s) dropped" if mapping["dropped_unused"] else "")
        + f"; normalisation from {norm_src}")
    for other in others:
        say(f"note: {src} also holds weights under {other!r}; import those with --container {other}")

    # ---- the check
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustPruneWarning)
        splits = load_splits(spec.name, data_dir=data_dir, val_size=val_size, seed=seed, device=dev)
    n_clean, n_adv = min(n_check, len(splits.val)), min(n_attack, n_check, len(splits.val))
    say(f"checking on the validation split of {spec.name}: clean accuracy on {n_clean} images, APGD-CE + APGD-T "
        f"(eps {budget:g}, {attack_steps} steps) on {n_adv}")
    clean, robust = check_accuracy(net, splits.val, n_clean=n_clean, n_attack=n_adv, eps=budget,
                                   steps=attack_steps, seed=seed)
    say(f"clean accuracy {clean:.4f} ({n_clean} validation images)"
        + ("" if robust is None else f"; APGD robust accuracy {robust:.4f} at eps {budget:g} ({n_adv} images)"))
    warned: list[str] = []
    flags: list[str] = []
    if _near_chance(clean, spec.num_classes):
        flags.append("chance-accuracy")
        identity = all(m == 0 for m in norm_mean) and all(v == 1 for v in norm_std)
        fix = ("a model trained on normalised inputs needs --mean/--std, e.g. the dataset's "
               f"{','.join(f'{v:g}' for v in spec.mean)} / {','.join(f'{v:g}' for v in spec.std)}" if identity
               else "a model trained on raw [0, 1] pixels needs --mean 0 --std 1")
        warned.append(f"clean accuracy {clean:.3f} is near chance (1/{spec.num_classes}): a wrong input "
                      f"normalisation (it came from {norm_src.split(':')[0]}; {fix}), a wrong architecture, or "
                      "labels in another order")
    if robust is not None and robust <= 0.02 and not flags:
        flags.append("not-robust")
        warned.append(f"APGD robust accuracy {robust:.3f} at eps {budget:g} is near zero: this does not look like an "
                      "adversarially trained model (or it was trained for a smaller eps; see --eps)")
    for w_ in warned:
        say(f"warning: {w_}")

    # ---- the checkpoint
    meta = {
        "architecture": arch_name, "dataset": spec.name, "num_classes": spec.num_classes,
        "input_shape": list(spec.shape), "width": float(width), "mean": list(norm_mean), "std": list(norm_std),
        "code_version": code_version(),
        "config": {"imported": True, "val_size": val_size, "split_seed": seed, "eval_precision": "fp32",
                   "data_dir": str(data_dir) if data_dir else None,
                   **({"command": command} if command is not None else {})},
        "import": {
            "source_file": weights.name, "source_path": str(weights.resolve()), "source_sha256": file_sha256(weights),
            "source_format": fmt, "container": path, "containers_not_used": others, "prefixes_stripped": stripped,
            **mapping,
            "normalization": {"mean": list(norm_mean), "std": list(norm_std), "source": norm_src},
            "check": {"split": "validation", "val_size": val_size, "split_seed": seed, "n_clean": n_clean,
                      "clean": clean, "attack": "apgd (APGD-CE + APGD-T, in-house Croce2020)", "eps": budget,
                      "steps": attack_steps, "n_attack": n_adv, "robust": robust, "eval_precision": "fp32"},
            "warnings": warned,
        },
        "validation": {"clean": clean, **({} if robust is None else {"apgd": robust})},
        "flags": flags,
    }
    save_checkpoint(out, net, meta=meta)
    say(f"saved {out} (+ {sidecar_path(out).name})")
    if log is None:
        for w_ in warned:
            warnings.warn(w_, RobustPruneWarning, stacklevel=2)
    return ImportResult(path=out, meta=meta, model=net, clean=clean, robust=robust, warnings=warned)
