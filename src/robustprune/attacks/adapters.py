"""Adapters to external attack libraries, imported lazily (optional extras).

- :func:`autoattack` — the official AutoAttack (Croce & Hein 2020) from the ``pyautoattack``
  package: ``pip install 'robustprune[autoattack]'``. Numbers from it are comparable with
  published (RobustBench) ones.
- :func:`bb_l0` — the Brendel & Bethge L0 attack (2019) of foolbox 3, started from adversarial
  points another attack found: ``pip install 'robustprune[foolbox]'``.

Both keep the attack contract although the libraries do not on their own: the parameters'
``requires_grad`` is switched off while they run (so the ``loss.backward()`` calls inside them
neither compute nor write any parameter ``.grad``) and restored afterwards; the global RNG state
they reseed is restored; the model's train/eval mode is never touched. They synchronise with the
host (the libraries do), so they are not for training loops.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from robustprune.attacks._common import (
    check_eps,
    check_inputs,
    check_int,
    check_positive,
    check_radius,
    finish_min_norm,
    misclassified,
)
from robustprune.attacks.results import MinNormResult, canonical_norm, check_l0_unit, perturbation_norm
from robustprune.errors import ConfigError, RobustPruneError

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
AA_VERSIONS = ("standard", "plus", "rand", "custom")


# --------------------------------------------------------------------------- helpers
def require_extra(module: str, extra: str, attack: str) -> ModuleType:
    """Import ``module`` or raise a one-line RobustPruneError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RobustPruneError(
            f"attack {attack!r} needs the optional extra {extra!r} ({module} is not importable: "
            f"{exc.__class__.__name__}); install it with: pip install 'robustprune[{extra}]'"
        ) from None


@contextlib.contextmanager
def external_call(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run an external library as if it kept the attack contract.

    Parameters stop requiring gradients (no weight gradient is computed or written, whatever the
    library calls), the global RNG state is forked (libraries that call ``torch.manual_seed`` do
    not reseed the caller's streams), gradient mode is enabled (attacks need input gradients
    even when called under ``torch.no_grad``), and a Python trace function (debugger, coverage)
    that the library removes is put back. All restored on exit.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    devices = [device] if device.type == "cuda" else []
    tracer = sys.gettrace()  # AutoAttack's dynamic-defence check calls sys.settrace(None)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            yield
    finally:
        for p in params:
            p.requires_grad_(True)
        if sys.gettrace() is not tracer:
            sys.settrace(tracer)


def _seed_from(generator: torch.Generator | None, seed: int | None) -> int:
    if seed is not None:
        return check_int(seed, "seed", 0)
    if generator is None:
        return 0
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


# --------------------------------------------------------------------------- AutoAttack
def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks_to_run: Sequence[str] | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    apgd_n_iter: int | None = None,
    apgd_n_restarts: int | None = None,
    apgd_targets: int | None = None,
    apgd_rho: float | None = None,
    apgd_eot_iter: int | None = None,
    apgd_use_largereps: bool | None = None,
    fab_n_iter: int | None = None,
    fab_n_restarts: int | None = None,
    fab_targets: int | None = None,
    square_n_queries: int | None = None,
    square_p_init: float | None = None,
    state_path: str | Path | None = None,
    verbose: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Official AutoAttack (``pyautoattack``): returns ``x_adv`` (detached; ``x`` where robust).

    ``version``: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square — the RobustBench protocol),
    ``"plus"``, ``"rand"`` (for randomised defences) or ``"custom"`` with ``attacks_to_run`` a
    subset of ``apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square`` (run in that order of the list).
    ``norm``: ``"Linf"`` (ε in [0, 1]), ``"L2"`` or ``"L1"``. The other flags override the
    version's settings when given (``None`` keeps them): APGD iterations / restarts / number of
    target classes / ρ / EOT iterations / L1 large-ε schedule, FAB iterations / restarts / targets,
    Square queries / p_init. The numbers of target classes default to the version's (9) capped at
    ``classes − 1``: the official code would fail on models with fewer than 10 classes, and on
    10-class models nothing changes. ``seed`` defaults to a draw from ``generator`` (0 without
    one); ``batch_size`` defaults to the whole batch; ``state_path`` lets AutoAttack resume;
    ``verbose`` shows its log.
    """
    check_inputs(x, y)
    norm_name = "L1" if str(norm).strip().upper() == "L1" else canonical_norm(norm)
    if norm_name == "L0":
        raise ConfigError("autoattack supports norm Linf, L2 or L1, not L0; use the 'bb-l0' or 'l0' attack")
    eps = check_eps(eps) if norm_name == "Linf" else check_radius(eps)
    if version not in AA_VERSIONS:
        raise ConfigError(f"autoattack version must be one of {', '.join(AA_VERSIONS)}, got {version!r}")
    attacks: list[str] | None = None
    if isinstance(attacks_to_run, str):  # from the CLI: "apgd-ce+apgd-t" (or spaces)
        attacks_to_run = attacks_to_run.replace("+", " ").split()
    if version == "custom":
        if not attacks_to_run:
            raise ConfigError(
                f"autoattack version='custom' needs attacks_to_run, a list from: {', '.join(AA_ATTACKS)}"
            )
        attacks = [str(a).lower() for a in attacks_to_run]
        bad = [a for a in attacks if a not in AA_ATTACKS]
        if bad:
            raise ConfigError(f"unknown AutoAttack attack(s) {bad}; choose from: {', '.join(AA_ATTACKS)}")
    elif attacks_to_run is not None:
        raise ConfigError(
            f"attacks_to_run is only used with version='custom' (version={version!r} fixes its own list)"
        )
    pyaa = require_extra("pyautoattack", "autoattack", "autoattack")

    x = x.detach()
    n = x.shape[0]
    if n == 0 or eps == 0:
        return x.clone()
    with torch.no_grad():
        n_classes = int(model(x[:1]).shape[1])
    seed_v = _seed_from(generator, seed)
    with external_call(model, x.device):
        aa = pyaa.AutoAttack(
            model, attacks=attacks, device=x.device, eps=eps, norm=norm_name, seed=seed_v, version=version
        )
        targets_cap = max(1, n_classes - 1)
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, targets_cap)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, targets_cap)
        overrides = {
            (aa.apgd, "n_iter"): apgd_n_iter, (aa.apgd_targeted, "n_iter"): apgd_n_iter,
            (aa.apgd, "n_restarts"): apgd_n_restarts,
            (aa.apgd_targeted, "n_target_classes"): apgd_targets,
            (aa.apgd, "thr_decr"): apgd_rho, (aa.apgd_targeted, "thr_decr"): apgd_rho,
            (aa.apgd, "eot_iter"): apgd_eot_iter, (aa.apgd_targeted, "eot_iter"): apgd_eot_iter,
            (aa.apgd, "use_largereps"): apgd_use_largereps, (aa.apgd_targeted, "use_largereps"): apgd_use_largereps,
            (aa.fab, "n_iter"): fab_n_iter, (aa.fab, "n_restarts"): fab_n_restarts,
            (aa.fab, "n_target_classes"): fab_targets,
            (aa.square, "n_queries"): square_n_queries, (aa.square, "p_init"): square_p_init,
        }
        for (obj, attr), value in overrides.items():
            if value is not None:
                if attr in ("n_iter", "n_restarts", "n_target_classes", "eot_iter", "n_queries"):
                    value = check_int(value, attr, 1)
                elif attr in ("thr_decr", "p_init"):
                    value = check_positive(value, attr)
                setattr(obj, attr, value)
                if attr == "n_iter" and hasattr(obj, "n_iter_orig"):  # APGD derives its schedule from these
                    obj.n_iter_orig = value
                    obj.n_iter_2 = max(int(0.22 * value), 1)
                    obj.n_iter_min = max(int(0.06 * value), 1)
                    obj.size_decr = max(int(0.03 * value), 1)
        bs = n if batch_size is None else check_int(batch_size, "batch_size", 1)
        logger = logging.getLogger("auto-attack")
        level = logger.level
        logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
        try:
            out = aa.run_standard_evaluation(
                x, y, batch_size=bs, state_path=None if state_path is None else Path(state_path)
            )
        finally:
            logger.setLevel(level)
    x_adv = out[0] if isinstance(out, tuple) else out
    return x_adv.to(x.device, x.dtype).clamp(0.0, 1.0).detach()


# --------------------------------------------------------------------------- Brendel & Bethge L0
def _starting_points(
    model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, l0_unit: str
) -> tuple[Tensor, Tensor]:
    """Adversarial starts for B&B: our greedy L0 attack's points; where it failed, another sample
    of the batch that the model assigns to a different class (Merkle2022's choice). Returns
    ``(starts, valid)``."""
    from robustprune.attacks.l0 import greedy_l0

    res = greedy_l0(model, x, y, l0_unit=l0_unit)
    starts = res.x_adv.clone()
    valid = torch.isfinite(res.norms) & (res.norms > 0)
    with torch.no_grad():
        pred = model(x).argmax(1)
    other = pred[None, :] != y[:, None]  # (i, j): sample j is classified away from y_i
    has_other = other.any(1)
    j = other.float().argmax(1)  # first such sample
    fallback = ~valid & has_other
    starts = torch.where(fallback.view(-1, *([1] * (x.dim() - 1))), x[j], starts)
    return starts, valid | fallback


def bb_l0(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | None = None,
    starting_points: Tensor | None = None,
    steps: int = 1000,
    lr: float = 1e-3,
    lr_decay: float = 0.5,
    lr_num_decay: int = 20,
    momentum: float = 0.8,
    overshoot: float = 1.1,
    binary_search_steps: int = 10,
    l0_unit: str = "pixel",
    generator: torch.Generator | None = None,
) -> MinNormResult | Tensor:
    """Brendel & Bethge L0 (foolbox 3's ``L0BrendelBethgeAttack``); returns a :class:`MinNormResult`.

    B&B walks along the decision boundary from an adversarial start towards ``x``. Starts:
    ``starting_points`` if given (each must be misclassified; others are skipped), else the points
    of our :func:`~robustprune.attacks.l0.greedy_l0` and, where it failed, another sample of the
    batch classified differently (Merkle2022 started from other test images). Flags are foolbox's
    (Merkle2022 App. A: ``steps=500``, ``lr=1e7``, ``lr_num_decay=30``, ``lr_decay=0.5``). Foolbox
    minimises the number of changed *elements*; the norms reported count pixels
    (``l0_unit="pixel"``, the default) or elements (``"element"``), measured on the returned
    points. With ``eps`` (a number of pixels/elements) returns the budget attack's ``x_adv``.
    ``generator`` is unused (the attack is deterministic given its starts).
    """
    check_inputs(x, y)
    l0_unit = check_l0_unit(l0_unit)
    if eps is not None:
        eps = check_radius(eps)
    steps = check_int(steps, "steps", 1)
    binary_search_steps = check_int(binary_search_steps, "binary_search_steps", 1)
    lr_num_decay = check_int(lr_num_decay, "lr_num_decay", 1)
    lr = check_positive(lr, "lr")
    lr_decay = check_positive(lr_decay, "lr_decay")
    overshoot = check_positive(overshoot, "overshoot")
    momentum = float(momentum)
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    fb = require_extra("foolbox", "foolbox", "bb-l0")
    require_extra("numba", "foolbox", "bb-l0")

    x = x.detach()
    if starting_points is None:
        starts, valid = _starting_points(model, x, y, generator, l0_unit)
    else:
        if not isinstance(starting_points, Tensor) or starting_points.shape != x.shape:
            raise ConfigError(f"starting_points must be a tensor shaped like x {tuple(x.shape)}")
        starts = starting_points.detach().to(x.device, x.dtype).clamp(0, 1)
        valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        valid = valid & misclassified(model(starts), y) & ~misclassified(model(x), y)
    x_found = starts.clone()
    idx = valid.nonzero().flatten()
    if idx.numel():
        with external_call(model, x.device):
            fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
            attack = fb.attacks.L0BrendelBethgeAttack(
                steps=steps, lr=lr, lr_decay=lr_decay, lr_num_decay=lr_num_decay, momentum=momentum,
                overshoot=overshoot, binary_search_steps=binary_search_steps,
            )
            adv = attack.run(
                fmodel, x[idx], fb.criteria.Misclassification(y[idx]), starting_points=starts[idx]
            )
        adv = adv.to(x.device, x.dtype).clamp(0, 1)
        # keep B&B's point unless the start is smaller in the unit reported (B&B counts elements)
        with torch.no_grad():
            adv_ok = misclassified(model(adv), y[idx])
        n_adv = perturbation_norm(x[idx], adv, "L0", l0_unit=l0_unit)
        n_start = perturbation_norm(x[idx], starts[idx], "L0", l0_unit=l0_unit)
        use = adv_ok & (n_adv <= n_start)
        x_found[idx] = torch.where(use.view(-1, *([1] * (x.dim() - 1))), adv, starts[idx])
    return finish_min_norm(model, x, y, x_found, valid, norm="L0", l0_unit=l0_unit, eps=eps)
