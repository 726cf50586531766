"""Deployment: export a (pruned) model to ONNX, TorchScript or a torch.export program, prove that the file
computes what was evaluated (logits, predictions, and accuracy on the model's own APGD examples), and measure
what it saves (parameters, MACs, file size, latency against the unpruned base).

``robustprune.export(model, "model.onnx", data=(x, y), eps=0.1)`` / ``robustprune export CKPT --format onnx``;
details in :mod:`robustprune.deploy.export` and :mod:`robustprune.deploy.formats`. ONNX needs the optional extra
``export`` (``pip install -e ".[export]"``: onnx, onnxruntime, onnxscript).
"""

from robustprune.deploy.export import (
    LOGIT_RTOL,
    REPORT_FORMAT,
    ROBUST_TOL_POINTS,
    ExportResult,
    adversarial_examples,
    export,
    measure_latency,
    model_sizes,
    slim_for_export,
    verify_export,
)
from robustprune.deploy.formats import FORMATS, ExportError, Format, get_format

__all__ = [
    "FORMATS",
    "LOGIT_RTOL",
    "REPORT_FORMAT",
    "ROBUST_TOL_POINTS",
    "ExportError",
    "ExportResult",
    "Format",
    "adversarial_examples",
    "export",
    "get_format",
    "measure_latency",
    "model_sizes",
    "slim_for_export",
    "verify_export",
]
