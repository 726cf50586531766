"""Export for deployment (robustprune.deploy): the exported file, loaded by its own runtime, computes what was
evaluated (logits, predictions, accuracy on the model's APGD examples); a broken export is caught and leaves
nothing behind; units removed entirely are cut out; the sizes are counted; bad input gets one line.

Known answers: the exported file is re-run here with the runtime's own API (not the library's runner); MACs of the
slim model are counted by hand; a tampered weight must fail the check."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from robustprune.deploy import ExportError, FORMATS, export, verify_export
from robustprune.errors import ConfigError
from robustprune.sparsity import MaskSet

onnx = pytest.importorskip("onnx", reason="the export extra (pip install -e '.[export]') is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")


class Normalize(nn.Module):
    def forward(self, x):
        return (x - 0.5) / 0.25


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(Normalize(), nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def data(n: int = 48, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def filter_pruned(seed: int = 0):
    """``small_net`` with filters 0, 2, 4 of the first conv and 1, 3 of the second removed (masks applied)."""
    net = small_net(seed)
    m1 = torch.ones(6, 1, 3, 3, dtype=torch.bool)
    m1[[0, 2, 4]] = False
    m2 = torch.ones(8, 6, 3, 3, dtype=torch.bool)
    m2[[1, 3]] = False
    masks = MaskSet({"1": m1, "3": m2})
    masks.apply(net)
    return net, masks


SUFFIX = {name: f.suffix for name, f in FORMATS.items()}


def own_runtime_logits(path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """The file run by its runtime's public API, independently of robustprune's runners."""
    if fmt == "onnx":
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(["logits"], {"images": x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    return torch.export.load(str(path)).module()(x)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_filter_pruned_model_exports_slim_and_verified_in_every_format(tmp_path, fmt, one_thread):
    net, masks = filter_pruned()
    x, y = data()
    out = tmp_path / f"model{SUFFIX[fmt]}"
    res = export(net, out, format=fmt, data=(x, y), eps=0.1, attack_steps=5, attack_targets=2, masks=masks,
                 base=small_net(0), latency=False)
    # three files, nothing else (no temporary left behind)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".json", out.name + ".md"])
    report = json.loads((tmp_path / (out.name + ".json")).read_text())
    assert report["format"] == "robustprune-export/1" and report["export_format"] == fmt
    ver = report["verification"]
    assert ver["passed"] and ver["prediction_agreement"] == 1.0 and ver["max_abs_logit_diff"] <= ver["logit_tolerance"]
    assert abs(ver["robust_acc_model"] - ver["robust_acc_export"]) <= 0.002
    # the file, run by its runtime's own API on a batch size never seen (dynamic batch), gives the model's logits
    xt = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = net(xt)
    got = own_runtime_logits(out, fmt, xt)
    assert got.shape == (7, 4)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=1e-5)
    # the removed filters are cut out: 3 of 6 and 2 of 8 units; MACs by hand (8x8 input, two 3x3 convs)
    assert report["slim"]["applied"] and report["slim"]["removed"] == 5
    assert report["slim"]["units"] == {"1": [3, 6], "3": [6, 8]}
    dense_model = 6 * 9 * 36 + 8 * 6 * 9 * 16 + 128 * 16 + 16 * 4
    slim = 3 * 9 * 36 + 6 * 3 * 9 * 16 + 96 * 16 + 16 * 4
    assert report["sizes"]["model"]["macs_dense"] == dense_model
    assert report["sizes"]["deployed"]["macs_dense"] == slim
    assert report["sizes"]["base"]["macs_dense"] == dense_model
    assert report["ratios_vs_base"]["macs_dense"] == pytest.approx(dense_model / slim)
    assert report["sizes"]["deployed"]["file_bytes"] == out.stat().st_size < report["sizes"]["base"]["file_bytes"]
    card = (tmp_path / (out.name + ".md")).read_text()
    assert "**passed**" in card and "APGD" in card


def test_the_verification_catches_a_tampered_onnx_weight(tmp_path, one_thread):
    net = small_net()
    x, y = data()
    out = tmp_path / "m.onnx"
    export(net, out, data=(x, y), eps=0.1, attack_steps=3, latency=False)
    assert verify_export(out, net, x, y)["passed"]
    # change one weight of the last layer in the file, as a corrupted download or a wrong conversion would
    proto = onnx.load(str(out))
    init = next(i for i in proto.graph.initializer if tuple(i.dims) == (4, 16))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr[0, 0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(out))
    with pytest.raises(ExportError, match="logits differ from the model's"):
        verify_export(out, net, x, y)
    r = verify_export(out, net, x, y, raise_on_failure=False)
    assert not r["passed"] and r["max_abs_logit_diff"] > r["logit_tolerance"]


def test_the_verification_catches_a_tampered_torchscript_weight(tmp_path, one_thread):
    net = small_net()
    x, y = data()
    out = tmp_path / "m.pt"
    export(net, out, format="torchscript", data=(x, y), eps=0.1, attack_steps=3, latency=False)
    mod = torch.jit.load(str(out))
    with torch.no_grad():
        dict(mod.named_parameters())["8.bias"][1] += 0.3
    torch.jit.save(mod, str(out))
    with pytest.raises(ExportError, match="does not compute what was evaluated"):
        verify_export(out, net, x, y)


def test_a_failed_verification_writes_nothing(tmp_path, monkeypatch, one_thread):
    """An export whose runtime computes something else (here: a runner that shifts one logit) fails with one line,
    and neither the file, nor its report, nor a temporary file is left."""
    import dataclasses

    from robustprune.deploy import formats

    real = formats.FORMATS["onnx"]

    def shifted(path, threads):
        run = real.load(path, threads)
        return lambda x: run(x) + torch.tensor([0.0, 0.0, 0.01, 0.0])

    monkeypatch.setitem(formats.FORMATS, "onnx", dataclasses.replace(real, load=shifted))
    x, y = data()
    with pytest.raises(ExportError) as exc:
        export(small_net(), tmp_path / "m.onnx", data=(x, y), eps=0.1, attack_steps=3, latency=False)
    assert "\n" not in str(exc.value) and "nothing was kept" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_robust_accuracy_of_the_export_is_measured_on_the_models_adversarial_examples(tmp_path, one_thread):
    """The figures in the report are the accuracies of the model and of the file on the same APGD examples,
    recomputed here by hand."""
    from robustprune.deploy import adversarial_examples

    net = small_net()
    x, y = data(64)
    x_adv = adversarial_examples(net, x, y, eps=0.2, steps=5, n_target_classes=2)
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6
    with torch.no_grad():
        acc_adv = float((net(x_adv).argmax(1) == y).float().mean())
        acc_clean = float((net(x).argmax(1) == y).float().mean())
    assert acc_adv < acc_clean  # the attack does something on this model
    res = export(net, tmp_path / "m.onnx", data=(x, y), eps=0.2, x_adv=x_adv, latency=False)
    ver = res.verification
    assert ver["robust_acc_model"] == pytest.approx(acc_adv) and ver["robust_acc_export"] == pytest.approx(acc_adv)
    assert ver["clean_acc_model"] == pytest.approx(acc_clean)


def test_sparse_onnx_stores_unstructured_zeros_compactly(tmp_path, one_thread):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4)).eval()
    g = torch.Generator().manual_seed(0)
    # the first layer 10 % dense, the last one dense (so that every unit stays read and nothing is slimmed)
    masks = MaskSet({"1": torch.rand(256, 64, generator=g) < 0.1, "3": torch.ones(4, 256, dtype=torch.bool)})
    masks.apply(net)
    x, y = data()
    dense = export(net, tmp_path / "dense.onnx", data=(x, y), eps=0.1, attack_steps=3, masks=masks, latency=False)
    sparse = export(net, tmp_path / "sparse.onnx", data=(x, y), eps=0.1, attack_steps=3, masks=masks, sparse=True,
                    latency=False)
    assert sparse.verification["passed"]
    assert not dense.report["slim"]["applied"]
    assert sparse.report["exporter"]["sparse_tensors"] == 1
    assert len(onnx.load(str(tmp_path / "sparse.onnx")).graph.sparse_initializer) == 1
    # 16,384 weights 10 % non-zero (12 bytes per non-zero instead of 4 per weight) + 1,024 dense: ~0.35x the file
    ratio = (tmp_path / "sparse.onnx").stat().st_size / (tmp_path / "dense.onnx").stat().st_size
    assert ratio < 0.45, ratio
    assert dense.report["sizes"]["deployed"]["params_nonzero"] == sparse.report["sizes"]["deployed"]["params_nonzero"]


def test_a_layer_the_format_cannot_export_is_named(tmp_path, one_thread):
    class NumpyClip(nn.Module):  # NumPy inside forward: no graph can hold it
        def forward(self, x):
            return torch.from_numpy(np.clip(x.detach().numpy(), 0, 1))

    net = nn.Sequential(nn.Conv2d(1, 2, 3), NumpyClip(), nn.Flatten(), nn.Linear(72, 3)).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    with pytest.raises(ExportError) as exc:
        export(net, tmp_path / "m.pt2", format="exported-program", data=(x, y), eps=0.1, attack_steps=2,
               latency=False)
    msg = str(exc.value)
    assert "\n" not in msg and "layer '1' (NumpyClip)" in msg and "standard torch operations" in msg
    assert list(tmp_path.iterdir()) == []


def test_bad_input_gets_one_line(tmp_path):
    net = small_net()
    x, y = data()
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; choose one of onnx, torchscript"):
        export(net, tmp_path / "m.tflite", format="tflite", data=(x, y), eps=0.1)
    with pytest.raises(ConfigError, match="--sparse is only for onnx"):
        export(net, tmp_path / "m.pt", format="torchscript", sparse=True, data=(x, y), eps=0.1)
    with pytest.raises(ConfigError, match="needs eps="):
        export(net, tmp_path / "m.onnx", data=(x, y), latency=False)
    with pytest.raises(ConfigError, match="data=.*or input_shape"):
        export(net, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_gives_the_install_hint(monkeypatch, tmp_path):
    from robustprune.deploy.formats import check_format_available

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ExportError) as exc:
        check_format_available("onnx")
    msg = str(exc.value)
    assert "\n" not in msg and "onnxruntime" in msg and 'pip install -e ".[export]"' in msg
    with pytest.raises(ExportError, match=r"\.\[export\]"):
        export(small_net(), tmp_path / "m.onnx", data=data(), eps=0.1)
    check_format_available("torchscript")  # the others need nothing extra


def test_without_data_random_inputs_check_the_logits(tmp_path, one_thread):
    res = export(small_net(), tmp_path / "m.pt2", format="exported-program", input_shape=(1, 8, 8), latency=False)
    assert res.verification["data"] == "random" and res.verification["passed"]
    assert "robust_acc_export" not in res.verification


def test_latency_is_measured_for_the_export_and_the_base(tmp_path, one_thread):
    """Only that every figure is there and positive (timings are for benchmarks, not tests)."""
    net, masks = filter_pruned()
    res = export(net, tmp_path / "m.onnx", data=data(16), eps=0.1, attack_steps=2, masks=masks, base=small_net(),
                 latency_time=0.03)
    ms = res.report["latency"]["ms"]
    assert set(ms) == {"onnxruntime", "pytorch", "base onnxruntime", "base pytorch"}
    assert all(v > 0 for d in ms.values() for v in d.values()) and set(ms["pytorch"]) == {"b1", "b64"}
    assert set(res.report["latency"]["speedup"]) == {"onnxruntime b1", "onnxruntime b64", "pytorch b1",
                                                     "pytorch b64"}
