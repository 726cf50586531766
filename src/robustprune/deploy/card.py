"""The model card written beside an export (``FILE.md``): the export report (``FILE.json``) for a person."""

from __future__ import annotations

import datetime
from typing import Any

_USAGE = {
    "onnx": ("import numpy as np, onnxruntime as ort\n"
             "sess = ort.InferenceSession(\"{file}\", providers=[\"CPUExecutionProvider\"])\n"
             "logits = sess.run(None, {{\"images\": images.astype(np.float32)}})[0]   # images: N x {shape} in [0, 1]"),
    "torchscript": ("import torch\n"
                    "model = torch.jit.load(\"{file}\")\n"
                    "logits = model(images)   # images: float32 tensor N x {shape} in [0, 1]"),
    "exported-program": ("import torch\n"
                         "model = torch.export.load(\"{file}\").module()\n"
                         "logits = model(images)   # images: float32 tensor N x {shape} in [0, 1]"),
}


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f} %"


def _n(v: Any) -> str:
    return "n/a" if v is None else f"{int(v):,}"


def _mb(v: Any) -> str:
    return "n/a" if v is None else f"{float(v) / 1e6:.3f} MB"


def model_card(report: dict[str, Any]) -> str:
    """Markdown: what the file is, how to run it, what was verified, what it saves, where it comes from."""
    prov = report.get("provenance") or {}
    ver = report["verification"]
    sizes = report["sizes"]
    shape = "x".join(str(s) for s in report["input"]["shape"][1:])
    title = prov.get("method") or "model"
    rate = prov.get("rate")
    lines = [f"# {report['file']}: {title}" + (f" at c = {rate:g}" if isinstance(rate, (int, float)) else ""), ""]
    when = datetime.datetime.fromtimestamp(report.get("created_at", 0), datetime.timezone.utc).strftime("%Y-%m-%d")
    lines += [f"{report['export_format']} file written by robustprune on {when} (torch {report['torch']}, "
              f"{report['exporter'].get('exporter', '?')}). Input `images`: float32 N x {shape} in [0, 1] "
              "(the normalisation is inside the graph), any batch size; output `logits`.", "",
              "```python", _USAGE[report["export_format"]].format(file=report["file"], shape=shape), "```", ""]
    ok = "passed" if ver.get("passed") else "FAILED"
    lines += ["## Verification", "",
              f"Loaded by its own runtime ({ver['runtime']}) and compared with the evaluated model (PyTorch, strict "
              f"fp32) on {ver['n']} {'test' if ver.get('data') == 'test' else 'random'} images: **{ok}**.", "",
              "| check | export | model | tolerance |", "|---|---|---|---|",
              f"| max \\|logit difference\\| | {ver['max_abs_logit_diff']:.3g} | | {ver['logit_tolerance']:.3g} |",
              f"| same predicted class | {_pct(ver['prediction_agreement'])} | | 100 % |"]
    if "clean_acc_export" in ver:
        lines.append(f"| clean accuracy | {_pct(ver['clean_acc_export'])} | {_pct(ver['clean_acc_model'])} | |")
    if "robust_acc_export" in ver:
        a = ver.get("attack") or {}
        lines.append(f"| accuracy on the model's APGD examples (eps {a.get('eps', '?')}, {a.get('steps', '?')} "
                     f"steps, {a.get('n_target_classes', '?')} targets) | {_pct(ver['robust_acc_export'])} | "
                     f"{_pct(ver['robust_acc_model'])} | {ver['robust_tol_points']:g} points |")
    lines += ["", "## What it saves", ""]
    cols = [("deployed", sizes["deployed"]), ("checkpoint (masked)", sizes["model"])]
    if sizes.get("base"):
        cols.append(("unpruned base", sizes["base"]))
    lines += ["| | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label, fmt in (("params", "parameters", _n), ("params_nonzero", "non-zero parameters", _n),
                            ("macs_dense", "MACs (dense kernels)", _n),
                            ("macs_effective", "MACs with a non-zero weight", _n),
                            ("file_bytes", "file size", _mb)):
        lines.append(f"| {label} | " + " | ".join(fmt(s.get(key)) for _, s in cols) + " |")
    slim = report.get("slim") or {}
    if slim.get("applied"):
        lines += ["", f"Units removed physically: {slim.get('removed')} (kept per layer: "
                  f"{slim.get('units_string') or slim.get('units')})."]
    elif slim:
        lines += ["", "No unit is removed entirely: unstructured zeros stay in the dense weights"
                  + (" (stored as sparse initializers)." if report.get("sparse") else ".")]
    lat = report.get("latency") or {}
    if lat.get("ms"):
        keys = list(next(iter(lat["ms"].values())))
        lines += ["", f"Median latency in ms ({lat['device']}, {lat['threads']} threads, {lat['method']}):", "",
                  "| runtime | " + " | ".join(f"batch {k[1:]}" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for rt, v in lat["ms"].items():
            lines.append(f"| {rt} | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |")
        if lat.get("speedup"):
            lines += ["", "Speed-up against the unpruned base in the same runtime: "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in lat["speedup"].items()) + "."]
        r = report.get("ratios_vs_base") or {}
        if "macs_dense" in r:
            lines.append(f"Against the base: {r['macs_dense']:.2f}x fewer dense MACs, "
                         f"{r['macs_effective']:.2f}x fewer MACs with a non-zero weight, {r['file_size']:.2f}x "
                         "smaller file. Dense kernels do not skip zero weights: only removed units save time.")
    if prov:
        lines += ["", "## Provenance", ""]
        for k, v in prov.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}={b}" for a, b in v.items()) or "(defaults)"
            lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"
