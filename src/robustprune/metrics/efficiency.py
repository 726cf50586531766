"""Compression as Madaan2020 (ANP) App. D reports it, and measured latency.

* **xFLOPs** = FLOPs of the original model / FLOPs of the pruned one (App. D (ii)). FLOPs here are the
  multiply-accumulates of the Conv2d and Linear layers (:func:`robustprune.metrics.flops`) for one input. For a
  *slim* model (units removed physically, :mod:`robustprune.sparsity.slim`) the ratio of dense counts is what the
  hardware saves (``xflops``); ``xflops_nonzero`` divides by the MACs that multiply a non-zero weight, the
  theoretical saving of unstructured sparsity (HYDRA), which dense kernels do not realise. (The ANP reference
  code counts ``2n - 1`` FLOPs per dot product plus bias, activation and pooling FLOPs; ratios differ slightly.)
* **Run-time memory** (App. D (i)): "the space for storing hidden feature maps during run-time in the pruned
  network versus the original model", in %. :func:`activation_memory` counts, for one input,

  - ``feature_maps``: the elements of every hidden feature map -- the output of every Conv2d / Linear layer but
    the logits layer (what a pruned unit no longer produces; activations and pooling act in place or on
    smaller maps of the same units); this is the definition we report;
  - ``anp_code``: what the ANP reference code counts instead (``memory/utils.py``): per conv, the im2col buffer
    ``k_h k_w C_in H_out W_out`` plus the kernel ``k_h k_w C_in C_out`` (+ 2 C_out for a BatchNorm); per linear,
    ``in * out + out``.
* **Latency** (:func:`measure_latency`, :func:`compare_latency`): the median wall time of a forward pass
  (``torch.utils.benchmark``, which synchronises CUDA), in eval mode under ``inference_mode``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError
from robustprune.metrics.accuracy import _model_device, eval_mode
from robustprune.metrics.complexity import _input_shape, count_params, flops


def activation_memory(model: nn.Module, input_shape: Any) -> dict[str, int]:
    """``{"feature_maps": int, "anp_code": int}`` for one input of ``input_shape`` (module docstring)."""
    shape = _input_shape(input_shape)
    records: list[tuple[nn.Module, Tensor, Tensor]] = []
    handles = []

    def hook(mod: nn.Module, inputs: Any, out: Any) -> None:
        x = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
        if isinstance(out, Tensor) and isinstance(x, Tensor):
            records.append((mod, x, out))

    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            handles.append(mod.register_forward_hook(hook))
    try:
        dev = _model_device(model, torch.device("cpu"))
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        with eval_mode(model), torch.inference_mode():
            logits = model(torch.zeros((1, *shape), device=dev, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    fmap = 0
    code = 0
    for mod, x, out in records:
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            code += 2 * mod.num_features
            continue
        if out is not logits:
            fmap += out.numel()
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            code += kh * kw * (mod.in_channels // mod.groups) * int(math.prod(out.shape[2:])) + mod.weight.numel()
        else:
            code += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
    return {"feature_maps": int(fmap), "anp_code": int(code)}


def efficiency_report(dense: nn.Module, pruned: nn.Module, input_shape: Any, *, dense_masks: Any = None,
                      pruned_masks: Any = None) -> dict[str, float]:
    """Madaan2020 (ANP) App. D numbers of ``pruned`` (a slim or a masked model) against the original ``dense`` one:

    ``xflops`` (dense MACs / pruned dense MACs), ``xflops_nonzero`` (dense MACs / MACs with a non-zero weight of
    ``pruned``), ``memory_pct`` (feature maps, % of dense), ``memory_pct_anp_code``, ``params_pct`` and
    ``weight_sparsity`` (1 - non-zero prunable weights of ``pruned`` / prunable weights of ``dense``).
    """
    fd = flops(dense, input_shape, dense_masks)
    fp = flops(pruned, input_shape, pruned_masks)
    md = activation_memory(dense, input_shape)
    mp = activation_memory(pruned, input_shape)
    pd = count_params(dense, dense_masks)
    pp = count_params(pruned, pruned_masks)

    def ratio(a: float, b: float) -> float:
        return float(a) / float(b) if b else float("inf")

    return {
        "xflops": ratio(fd["dense"], fp["dense"]),
        "xflops_nonzero": ratio(fd["dense"], fp["effective"]),
        "flops_dense": float(fd["dense"]),
        "flops_pruned": float(fp["dense"]),
        "flops_pruned_nonzero": float(fp["effective"]),
        "memory_pct": 100.0 * ratio(mp["feature_maps"], md["feature_maps"]),
        "memory_pct_anp_code": 100.0 * ratio(mp["anp_code"], md["anp_code"]),
        "params_pct": 100.0 * ratio(pp["nonzero"], pd["total"]),
        "weight_sparsity": 1.0 - ratio(pp["nonzero_prunable"], pd["prunable"]),
    }


def measure_latency(model: nn.Module, input_shape: Any, *, batch_size: int = 128, min_run_time: float = 0.5,
                    device: torch.device | str | None = None, threads: int | None = None) -> dict[str, float]:
    """Median forward time of ``model`` on a batch of ``batch_size`` random inputs (eval mode,
    ``inference_mode``; ``torch.utils.benchmark.Timer.blocked_autorange``). Returns milliseconds per batch
    (``median_ms``, ``iqr_ms``) and the settings. Not for tests: timings depend on the machine's load."""
    import torch.utils.benchmark as benchmark

    shape = _input_shape(input_shape)
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else _model_device(model, torch.device("cpu"))
    x = torch.rand((int(batch_size), *shape), device=dev)
    nthreads = int(threads) if threads is not None else torch.get_num_threads()
    with eval_mode(model), torch.inference_mode():
        model(x)  # warm-up
        timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=nthreads)
        m = timer.blocked_autorange(min_run_time=float(min_run_time))
    return {"median_ms": 1e3 * float(m.median), "iqr_ms": 1e3 * float(m.iqr), "batch_size": int(batch_size),
            "threads": nthreads, "device": str(dev), "runs": int(len(m.times))}


def compare_latency(dense: nn.Module, slim: nn.Module, input_shape: Any, *, batch_size: int = 128,
                    rounds: int = 3, min_run_time: float = 0.3, device: torch.device | str | None = None
                    ) -> dict[str, float]:
    """Latency of ``dense`` and ``slim``, measured in alternation ``rounds`` times (so a change of machine load
    hits both), each the median of a ``blocked_autorange``; reports the median over rounds and
    ``speedup = dense_ms / slim_ms``."""
    d, s = [], []
    where = ""
    for _ in range(max(1, int(rounds))):
        r = measure_latency(dense, input_shape, batch_size=batch_size, min_run_time=min_run_time, device=device)
        d.append(r["median_ms"])
        where = r["device"]
        s.append(measure_latency(slim, input_shape, batch_size=batch_size, min_run_time=min_run_time,
                                 device=device)["median_ms"])
    dm, sm = sorted(d)[len(d) // 2], sorted(s)[len(s) // 2]
    return {"dense_ms": dm, "slim_ms": sm, "speedup": dm / sm if sm > 0 else float("inf"),
            "batch_size": int(batch_size), "rounds": len(d), "device": where, "threads": torch.get_num_threads()}
