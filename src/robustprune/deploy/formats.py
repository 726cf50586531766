"""Deployment formats: how a model is written, and how the format's own runtime loads it back.

=====================  ==========  =======================================  ==========================================
format                 file        written by                               loaded (for verification) by
=====================  ==========  =======================================  ==========================================
``onnx``               ``.onnx``   ``torch.onnx.export(dynamo=True)``       ONNX Runtime (CPU provider), extra
                                   (opset 18+; the TorchScript-based        ``export``: ``pip install -e ".[export]"``
                                   exporter if that fails)
``torchscript``        ``.pt``     ``torch.jit.trace``                      ``torch.jit.load``
``exported-program``   ``.pt2``    ``torch.export.export`` + ``save``       ``torch.export.load(...).module()``
=====================  ==========  =======================================  ==========================================

Every graph takes float32 NCHW images in [0, 1] (input ``images``) with a dynamic batch size and returns logits
(``logits``); the input normalisation is the model's own first operation, so it is inside the graph. The model is
exported in eval mode. ``sparse`` (ONNX only) stores each weight tensor with at most a third of its entries
non-zero as an ONNX ``SparseTensorProto`` (values + int64 linear indices: 12 bytes per non-zero instead of 4 bytes
per entry); ONNX Runtime densifies it when it loads the file, so it saves disk and download, not compute.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError, RobustPruneError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
EXPORT_EXTRA_HINT = "pip install -e \".[export]\" (or pip install onnx onnxruntime onnxscript)"


class ExportError(RobustPruneError):
    """A model that cannot be exported, or an export that does not compute what was evaluated."""


Runner = Callable[[Tensor], Tensor]
"""A loaded artifact: float32 CPU NCHW images in [0, 1] -> float32 CPU logits."""


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    runtime: str
    description: str
    sparse_ok: bool
    write: Callable[[nn.Module, Tensor, Path, bool], dict[str, Any]]
    load: Callable[[Path, int], Runner]


def require_module(module: str, what: str) -> Any:
    """Import ``module`` or raise the one-line hint to install the ``export`` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{what} needs {module}, which is not installed ({type(exc).__name__}); install the "
                          f"optional extra: {EXPORT_EXTRA_HINT}") from None


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and deprecation chatter: keep it off the user's terminal."""
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        import logging

        logger = logging.getLogger("torch.onnx")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            yield out
        finally:
            logger.setLevel(level)


def _batch_dim() -> Any:
    from torch.export import Dim

    return Dim("batch", min=1, max=1 << 20)


# ---- ONNX ------------------------------------------------------------------------------------------------------
def _write_onnx(model: nn.Module, example: Tensor, path: Path, sparse: bool) -> dict[str, Any]:
    onnx = require_module("onnx", "format 'onnx'")
    require_module("onnxruntime", "format 'onnx'")
    info: dict[str, Any] = {}
    first_error: BaseException | None = None
    with _quiet():
        try:
            require_module("onnxscript", "format 'onnx'")
            prog = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: _batch_dim()},),
                                     input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
            prog.save(str(path))
            info["exporter"] = "torch.onnx.export(dynamo=True)"
        except Exception as exc:  # noqa: BLE001 - the legacy exporter is the documented fallback
            first_error = exc
    if first_error is not None:
        with _quiet():
            try:
                torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"},
                                                                            OUTPUT_NAME: {0: "batch"}},
                                  opset_version=17)
                info["exporter"] = "torch.onnx.export(dynamo=False) (the dynamo exporter failed: " + \
                    _first_line(first_error) + ")"
            except Exception:  # noqa: BLE001
                raise first_error from None
    proto = onnx.load(str(path))
    info["opset"] = int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))
    if sparse:
        info["sparse_tensors"] = _sparsify_onnx(proto)
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return info


def _sparsify_onnx(proto: Any) -> int:
    """Store every initializer of rank >= 2 with at most 1/3 non-zero entries as a SparseTensorProto (in place);
    returns how many were converted."""
    import numpy as np
    from onnx import helper, numpy_helper

    keep, converted = [], 0
    for init in list(proto.graph.initializer):
        arr = numpy_helper.to_array(init)
        nz = np.flatnonzero(arr)
        if arr.ndim >= 2 and arr.size and 3 * nz.size <= arr.size:
            values = numpy_helper.from_array(arr.reshape(-1)[nz], init.name)
            indices = numpy_helper.from_array(nz.astype(np.int64), init.name + "_indices")
            proto.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(arr.shape)))
            converted += 1
        else:
            keep.append(init)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return converted


def _load_onnx(path: Path, threads: int) -> Runner:
    ort = require_module("onnxruntime", "format 'onnx'")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # no busy-waiting of idle pool threads after a run: it would steal the cores from whatever runs next (PyTorch in
    # an alternating latency measurement, the next attack batch) and distort both
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        out = sess.run(None, {name: x.detach().to("cpu", torch.float32).contiguous().numpy()})[0]
        return torch.from_numpy(out)

    run.session = sess  # type: ignore[attr-defined]
    return run


# ---- TorchScript -----------------------------------------------------------------------------------------------
def _write_torchscript(model: nn.Module, example: Tensor, path: Path, sparse: bool) -> dict[str, Any]:
    with _quiet():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path))
    return {"exporter": "torch.jit.trace"}


def _load_torchscript(path: Path, threads: int) -> Runner:
    with _quiet():
        mod = torch.jit.load(str(path), map_location="cpu")
    mod.eval()

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return mod(x.detach().to("cpu", torch.float32)).float()

    return run


# ---- torch.export ----------------------------------------------------------------------------------------------
def _write_exported_program(model: nn.Module, example: Tensor, path: Path, sparse: bool) -> dict[str, Any]:
    with _quiet():
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
        torch.export.save(ep, str(path))
    return {"exporter": "torch.export.export"}


def _load_exported_program(path: Path, threads: int) -> Runner:
    with _quiet():
        mod = torch.export.load(str(path)).module()

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return mod(x.detach().to("cpu", torch.float32)).float()

    return run


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", ".onnx", "onnxruntime", "ONNX graph for ONNX Runtime and other ONNX runtimes",
                   True, _write_onnx, _load_onnx),
    "torchscript": Format("torchscript", ".pt", "torch.jit", "TorchScript module (torch.jit.load, LibTorch C++)",
                          False, _write_torchscript, _load_torchscript),
    "exported-program": Format("exported-program", ".pt2", "torch.export",
                               "torch.export ExportedProgram (torch.export.load; AOTInductor, ExecuTorch)",
                               False, _write_exported_program, _load_exported_program),
}


def get_format(name: str) -> Format:
    fmt = FORMATS.get(str(name).strip().lower())
    if fmt is None:
        raise ConfigError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def check_format_available(name: str) -> Format:
    """The format, after checking that its runtime is installed (ONNX: the ``export`` extra); one-line error else."""
    fmt = get_format(name)
    if fmt.name == "onnx":
        for module in ("onnx", "onnxruntime", "onnxscript"):
            require_module(module, "format 'onnx'")
    return fmt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # ANSI colour codes of torch.onnx's messages
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return f"{type(exc).__name__}: " + ((text.splitlines() or [""])[0][:240])
