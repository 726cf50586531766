"""`robustprune import`: weights saved by other code become ordinary checkpoints, checked on the data.

The README's own model (``MyNet``) is trained for a few seconds with FGSM-RS and saved the ways users save it (plain
``state_dict``, DataParallel-prefixed, wrapped in ``{'state_dict': ...}``), imported from the CLI and pruned from
the CLI. Checkpoints in RobustBench's and torchvision's layouts are built here from those zoos' module definitions
(names, shapes, and the forward passes as reference functions below, no download) and must import to models that
compute what the zoo's model computes.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import README_NET as MYNET
from conftest import cli


CHECK = ["--n-check", "500", "--n-attack", "100", "--attack-steps", "10"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small models on a shared 2-core CPU: one thread is several times faster
    yield
    torch.set_num_threads(n)


@pytest.fixture
def usernets(tmp_path, monkeypatch):
    (tmp_path / "usernets").mkdir()
    (tmp_path / "usernets" / "__init__.py").write_text("")
    (tmp_path / "usernets" / "mynet.py").write_text(MYNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in ("usernets", "usernets.mynet"):
        sys.modules.pop(m, None)
    from usernets.mynet import MyNet

    return MyNet


def _train_briefly(make, seed=0):
    """A ``make()`` model (seeded) after 60 steps of FGSM-RS adversarial training (eps 0.1) on 3,000 Fashion-MNIST
    training images (~1 s)."""
    from robustprune.data import load_splits

    s = load_splits("fashion-mnist", val_size=5000)
    x, y = s.train.x[:3000], s.train.y[:3000]
    torch.manual_seed(seed)
    net = make()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for i in range(0, len(x), 50):
        xb, yb = x[i:i + 50], y[i:i + 50]
        d = ((torch.rand_like(xb) * 2 - 1) * 0.1).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net((xb + d).clamp(0, 1)), yb), d)
        xa = (xb + (d + 0.125 * g.sign()).clamp(-0.1, 0.1)).clamp(0, 1).detach()
        loss = F.cross_entropy(net(xa), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _accuracies(out: str) -> tuple[float, float]:
    line = next(ln for ln in out.splitlines() if ln.startswith("clean accuracy"))
    words = line.replace(";", "").split()
    return float(words[2]), float(words[words.index("accuracy", 3) + 1])


# ------------------------------------------------------------------------------------- your own model, 3 ways
@pytest.mark.usefixtures("fmnist_available")
def test_the_readme_state_dict_saved_three_ways_imports_and_prunes_from_the_cli(tmp_path, usernets, monkeypatch,
                                                                                capsys):
    from robustprune.checkpoint import load_checkpoint

    net = _train_briefly(usernets)
    sd = net.state_dict()
    files = {"plain": tmp_path / "plain.pt", "dataparallel": tmp_path / "dp.pth", "wrapped": tmp_path / "wrapped.pt"}
    torch.save(sd, files["plain"])
    torch.save({f"module.{k}": v for k, v in sd.items()}, files["dataparallel"])
    torch.save({"state_dict": sd, "epoch": 3, "best_acc": 0.7, "optimizer": {"lr": 0.002}}, files["wrapped"])
    accs = {}
    for way, f in files.items():
        out_ckpt = tmp_path / f"{way}.safetensors"
        code, out, err = cli(monkeypatch, capsys, "import", str(f), "--model", "usernets.mynet:MyNet", "--dataset",
                             "fashion-mnist", "--out", str(out_ckpt), *CHECK)
        assert code == 0, out + err
        accs[way] = _accuracies(out)
        model, meta, _ = load_checkpoint(out_ckpt, model=usernets())
        for k, v in sd.items():  # the weights arrived unchanged, under the model's own names
            assert torch.equal(model.state_dict()[k], v), k
        imp = meta["import"]
        assert imp["source_file"] == f.name and len(imp["source_sha256"]) == 64
        assert imp["prefixes_stripped"] == (["module."] if way == "dataparallel" else [])
        assert imp["container"] == (["state_dict"] if way == "wrapped" else [])
        assert meta["architecture"] == "usernets.mynet:MyNet" and meta["dataset"] == "fashion-mnist"
        assert meta["validation"]["clean"] == imp["check"]["clean"] == accs[way][0]
    with capsys.disabled():
        print(f"\nimport (README MyNet, 60 FGSM-RS steps): clean / APGD = {accs}")
    assert len(set(accs.values())) == 1  # the same model, whichever way it was saved
    clean, robust = accs["plain"]
    assert clean > 0.6 and 0.05 < robust < clean  # trained, somewhat robust: no warning
    assert "warning" not in err

    pruned = tmp_path / "pruned"
    code, out, err = cli(monkeypatch, capsys, "prune", str(tmp_path / "dataparallel.safetensors"), "--model",
                         "usernets.mynet:MyNet", "--method", "magnitude-unstructured-global", "--rate", "2",
                         "--epochs", "1", "--train-limit", "300", "--out", str(pruned), "-q")
    assert code == 0, out + err
    (p,) = pruned.glob("*.safetensors")
    model, meta, masks = load_checkpoint(p, model=usernets())
    assert 1.9 < meta["achieved_compression"] < 2.1
    assert meta["import"]["source_file"] == "dp.pth"  # the provenance travels on
    assert meta["config"]["val_size"] == 5000  # pruning kept import's validation split out of training


def test_the_python_api_imports_an_instance(tmp_path, usernets, fmnist_available):
    import robustprune

    net = _train_briefly(usernets, seed=1)
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "c.pt")
    res = robustprune.import_model(tmp_path / "c.pt", model=usernets(), dataset="fashion-mnist",
                                   out=tmp_path / "c.safetensors", n_check=300, n_attack=50, attack_steps=5)
    assert res.meta["import"]["prefixes_stripped"] == ["_orig_mod."] and res.meta["import"]["container"] == ["model"]
    assert res.clean > 0.6 and res.path.exists() and not res.warnings
    side = json.loads((tmp_path / "c.json").read_text())
    assert side["import"]["check"]["n_attack"] == 50 and side["validation"]["apgd"] == res.robust


def test_a_pickled_module_is_refused_in_one_line(tmp_path, usernets, monkeypatch, capsys):
    torch.save(usernets(), tmp_path / "whole.pt")  # the model object itself, not its state dict
    out_ckpt = tmp_path / "x.safetensors"
    code, out, err = cli(monkeypatch, capsys, "import", str(tmp_path / "whole.pt"), "--model",
                         "usernets.mynet:MyNet", "--dataset", "fashion-mnist", "--out", str(out_ckpt))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and "pickled Python objects" in lines[0] and "MyNet" in lines[0]
    assert "state_dict()" in lines[0]
    assert not out_ckpt.exists() and not out_ckpt.with_suffix(".json").exists()


# ------------------------------------------------------------------ RobustBench / torchvision layouts, built here
def _bn_state(s: dict, prefix: str, c: int, g: torch.Generator) -> None:
    s[prefix + "weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    s[prefix + "bias"] = 0.1 * torch.randn(c, generator=g)
    s[prefix + "running_mean"] = 0.1 * torch.randn(c, generator=g)
    s[prefix + "running_var"] = 0.5 + torch.rand(c, generator=g)
    s[prefix + "num_batches_tracked"] = torch.tensor(100)


def _conv(c_out: int, c_in: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(c_out, c_in, k, k, generator=g) * (2.0 / (k * k * c_out)) ** 0.5


def rb_wideresnet_state(depth: int, widen: int, in_ch: int = 3, classes: int = 10, sub_block1: bool = False,
                        seed: int = 0) -> dict:
    """The state dict of RobustBench's ``WideResNet(depth, widen_factor=widen)`` (model_zoo/architectures/
    wide_resnet.py): conv1, block{1,2,3}.layer.{i} (bn1, conv1, bn2, conv2, convShortcut when in != out), bn1, fc."""
    g = torch.Generator().manual_seed(seed)
    ch = [16, 16 * widen, 32 * widen, 64 * widen]
    n = (depth - 4) // 6
    s: dict = {"conv1.weight": _conv(16, in_ch, 3, g)}
    blocks = [("block1", ch[0], ch[1]), ("block2", ch[1], ch[2]), ("block3", ch[2], ch[3])]
    if sub_block1:
        blocks.append(("sub_block1", ch[0], ch[1]))
    for name, c_in, c_out in blocks:
        for i in range(n):
            p, cin = f"{name}.layer.{i}.", (c_in if i == 0 else c_out)
            _bn_state(s, p + "bn1.", cin, g)
            s[p + "conv1.weight"] = _conv(c_out, cin, 3, g)
            _bn_state(s, p + "bn2.", c_out, g)
            s[p + "conv2.weight"] = _conv(c_out, c_out, 3, g)
            if cin != c_out:
                s[p + "convShortcut.weight"] = _conv(c_out, cin, 1, g)
    _bn_state(s, "bn1.", ch[3], g)
    s["fc.weight"] = 0.1 * torch.randn(classes, ch[3], generator=g)
    s["fc.bias"] = torch.zeros(classes)
    return s


def rb_preact18_state(in_ch: int = 3, classes: int = 10, bn_before_fc: bool = False, seed: int = 0) -> dict:
    """RobustBench's ``PreActResNet(PreActBlock, [2, 2, 2, 2], bn_before_fc=...)`` (resnet.py): conv1,
    layer{1..4}.{0,1} (bn1, conv1, bn2, conv2, shortcut.0 when the shape changes), [bn], linear."""
    g = torch.Generator().manual_seed(seed)
    s: dict = {"conv1.weight": _conv(64, in_ch, 3, g)}
    c_in = 64
    for layer, planes in enumerate((64, 128, 256, 512), 1):
        for i in range(2):
            p, stride = f"layer{layer}.{i}.", (1 if layer == 1 or i else 2)
            _bn_state(s, p + "bn1.", c_in, g)
            s[p + "conv1.weight"] = _conv(planes, c_in, 3, g)
            _bn_state(s, p + "bn2.", planes, g)
            s[p + "conv2.weight"] = _conv(planes, planes, 3, g)
            if stride != 1 or c_in != planes:
                s[p + "shortcut.0.weight"] = _conv(planes, c_in, 1, g)
            c_in = planes
    if bn_before_fc:
        _bn_state(s, "bn.", 512, g)
    s["linear.weight"] = 0.05 * torch.randn(classes, 512, generator=g)
    s["linear.bias"] = 0.1 * torch.randn(classes, generator=g)
    return s


def torchvision_resnet_state(bottleneck: bool, classes: int = 1000, seed: int = 0) -> dict:
    """torchvision ``resnet18`` / ``resnet50`` (torchvision/models/resnet.py) names and shapes: conv1 7x7, bn1,
    layer{1..4}.{i}.(conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0/.1), fc."""
    g = torch.Generator().manual_seed(seed)
    s: dict = {"conv1.weight": _conv(64, 3, 7, g)}
    _bn_state(s, "bn1.", 64, g)
    c_in, exp = 64, (4 if bottleneck else 1)
    for layer, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)), 1):
        for i in range(n):
            p, stride = f"layer{layer}.{i}.", (2 if layer > 1 and i == 0 else 1)
            if bottleneck:
                s[p + "conv1.weight"] = _conv(planes, c_in, 1, g)
                _bn_state(s, p + "bn1.", planes, g)
                s[p + "conv2.weight"] = _conv(planes, planes, 3, g)
                _bn_state(s, p + "bn2.", planes, g)
                s[p + "conv3.weight"] = _conv(planes * 4, planes, 1, g)
                _bn_state(s, p + "bn3.", planes * 4, g)
            else:
                s[p + "conv1.weight"] = _conv(planes, c_in, 3, g)
                _bn_state(s, p + "bn1.", planes, g)
                s[p + "conv2.weight"] = _conv(planes, planes, 3, g)
                _bn_state(s, p + "bn2.", planes, g)
            if stride != 1 or c_in != planes * exp:
                s[p + "downsample.0.weight"] = _conv(planes * exp, c_in, 1, g)
                _bn_state(s, p + "downsample.1.", planes * exp, g)
            c_in = planes * exp
    s["fc.weight"] = 0.05 * torch.randn(classes, c_in, generator=g)
    s["fc.bias"] = torch.zeros(classes)
    return s


def _bn(x, s, p):
    return F.batch_norm(x, s[p + "running_mean"], s[p + "running_var"], s[p + "weight"], s[p + "bias"], False, 0.0,
                        1e-5)


def rb_wideresnet_forward(s: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    """RobustBench's WideResNet.forward and BasicBlock.forward, as functions of its state dict."""
    out = F.conv2d(x, s["conv1.weight"], padding=1)
    for b, stride in ((1, 1), (2, 2), (3, 2)):
        for i in range((depth - 4) // 6):
            p, st = f"block{b}.layer.{i}.", (stride if i == 0 else 1)
            equal = p + "convShortcut.weight" not in s
            if not equal:
                out = F.relu(_bn(out, s, p + "bn1."))
                o = out
            else:
                o = F.relu(_bn(out, s, p + "bn1."))
            o = F.relu(_bn(F.conv2d(o, s[p + "conv1.weight"], stride=st, padding=1), s, p + "bn2."))
            o = F.conv2d(o, s[p + "conv2.weight"], padding=1)
            out = (out if equal else F.conv2d(out, s[p + "convShortcut.weight"], stride=st)) + o
    out = F.relu(_bn(out, s, "bn1."))
    return F.linear(out.mean((2, 3)), s["fc.weight"], s["fc.bias"])  # avg_pool2d(out, 8) on CIFAR's 8x8 map


def rb_preact_forward(s: dict, x: torch.Tensor, out_shortcut: bool, bn_before_fc: bool) -> torch.Tensor:
    """RobustBench's PreActResNet.forward with PreActBlock (``out_shortcut``: the shortcut conv reads the
    pre-activation, as PreActBlockV2) as functions of its state dict."""
    out = F.conv2d(x, s["conv1.weight"], padding=1)
    for layer in range(1, 5):
        for i in range(2):
            p, st = f"layer{layer}.{i}.", (1 if layer == 1 or i else 2)
            o = F.relu(_bn(out, s, p + "bn1."))
            sc = F.conv2d(o if out_shortcut else out, s[p + "shortcut.0.weight"], stride=st) \
                if p + "shortcut.0.weight" in s else out
            o = F.conv2d(o, s[p + "conv1.weight"], stride=st, padding=1)
            o = F.conv2d(F.relu(_bn(o, s, p + "bn2.")), s[p + "conv2.weight"], padding=1)
            out = o + sc
    if bn_before_fc:
        out = F.relu(_bn(out, s, "bn."))
    return F.linear(out.mean((2, 3)), s["linear.weight"], s["linear.bias"])


def _fit(arch: str, obj, *, in_ch=3, classes=10, size=32, key_map=None):
    """The library path of `import` up to the loaded model (no data): find, strip, normalisation, fit."""
    from robustprune.checkpoint_import import find_state_dict, fit_state, strip_prefixes, take_normalization
    from robustprune.models import create_model

    state, path, _ = find_state_dict(obj)
    state, stripped = strip_prefixes(state)
    state, norm = take_normalization(state, obj, in_ch)
    mean, std = (norm[0], norm[1]) if norm else ((0.0,) * in_ch, (1.0,) * in_ch)
    model = create_model(arch, num_classes=classes, in_channels=in_ch, input_size=size, mean=mean, std=std)
    record = fit_state(state, model, what=arch, src="test file", arch=arch, key_map=key_map)
    return model.eval(), record, norm


def test_robustbench_wrn_28_10_checkpoint_loads_and_computes_what_robustbench_computes():
    rb = rb_wideresnet_state(28, 10, sub_block1=True)  # Carmon2019-style entries carry an unused sub_block1
    mu, sigma = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1), torch.tensor([0.2471, 0.2435, 0.2616]).view(
        1, 3, 1, 1)
    obj = {"state_dict": {f"module.{k}": v for k, v in {**rb, "mu": mu, "sigma": sigma}.items()}}
    model, record, norm = _fit("wrn-28-10", obj, size=16)
    assert record["key_map"] == "robustbench-wideresnet"
    assert record["renamed"]["block2.layer.0.convShortcut.weight"] == "layer2.0.shortcut.0.weight"
    assert record["renamed"]["bn1.weight"] == "final.0.weight" and record["renamed"]["conv1.weight"] == "stem.0.weight"
    assert len(record["dropped_unused"]) > 0 and all(k.startswith("sub_block1.") for k in record["dropped_unused"])
    assert norm[2] == "the file (mu, sigma)" and norm[0] == pytest.approx(mu.flatten().tolist())
    assert sum(p.numel() for p in model.parameters()) == 36_479_194  # WRN-28-10 at 10 classes
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(x), rb_wideresnet_forward(rb, (x - mu) / sigma, 28)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("bn_before_fc,arch", [(False, "preact-resnet18-rb"), (True, "preact-resnet18")])
def test_robustbench_preact_resnet18_checkpoints_compute_what_robustbench_computes(bn_before_fc, arch):
    rb = rb_preact18_state(bn_before_fc=bn_before_fc)
    model, record, _ = _fit(arch, rb)
    assert record["key_map"] == "robustbench-preactresnet"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # Wong2020Fast: PreActBlock on x, no final BN; Rice2020/Kireev2021: V2 on pre, with BN
        ours, ref = model(x), rb_preact_forward(rb, x, out_shortcut=bn_before_fc, bn_before_fc=bn_before_fc)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    other = "preact-resnet18" if arch == "preact-resnet18-rb" else "preact-resnet18-rb"
    from robustprune.errors import CheckpointError

    with pytest.raises(CheckpointError, match=f"--arch {arch}$"):  # the near miss says which architecture fits
        _fit(other, rb)


@pytest.mark.parametrize("arch,bottleneck", [("resnet18-tv", False), ("resnet50-tv", True)])
def test_torchvision_resnet_names_load(arch, bottleneck):
    tv = torchvision_resnet_state(bottleneck)
    model, record, _ = _fit(arch, tv, classes=1000, size=64)
    assert record["key_map"] == "torchvision-resnet" and record["renamed"]["layer2.0.downsample.1.running_var"] == \
        "layer2.0.shortcut.1.running_var"
    own = model.state_dict()
    for k, v in tv.items():
        assert torch.equal(own[record["renamed"].get(k, k)], v), k


@pytest.mark.usefixtures("fmnist_available")
def test_a_robustbench_preact_resnet18_imports_from_the_cli_and_is_checked(tmp_path, monkeypatch, capsys):
    rb = rb_preact18_state(in_ch=1)  # Wong2020Fast's layout for 1-channel Fashion-MNIST, untrained
    mu, sigma = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.25)  # Wong2020FastNet's buffers
    torch.save({"net": {**rb, "mu": mu, "sigma": sigma}, "epoch": 15}, tmp_path / "rb.pth")
    out_ckpt = tmp_path / "rb.safetensors"
    code, out, err = cli(monkeypatch, capsys, "import", str(tmp_path / "rb.pth"), "--arch", "preact-resnet18-rb",
                         "--dataset", "fashion-mnist", "--out", str(out_ckpt), "--n-check", "200", "--n-attack",
                         "20", "--attack-steps", "5")
    assert code == 0, out + err
    clean, robust = _accuracies(out)
    print(f"import (RobustBench PreActResNet-18 layout, random weights): clean {clean} APGD {robust}")
    assert "names mapped with robustbench-preactresnet" in out and "normalisation from the file (mu, sigma)" in out
    assert "near chance" in err  # an untrained model is said to be one
    meta = json.loads(out_ckpt.with_suffix(".json").read_text())
    assert meta["architecture"] == "preact-resnet18-rb" and meta["mean"] == [0.5] and meta["std"] == [0.25]
    assert meta["flags"] == ["chance-accuracy"] and meta["import"]["container"] == ["net"]
    assert meta["import"]["renamed"]["linear.weight"] == "fc.weight"


def test_a_mismatched_file_names_the_tensor_and_both_shapes(tmp_path, monkeypatch, capsys, fmnist_available):
    rb = rb_preact18_state(in_ch=1, bn_before_fc=True)
    torch.save(rb, tmp_path / "wide.pt")
    code, out, err = cli(monkeypatch, capsys, "import", str(tmp_path / "wide.pt"), "--arch", "preact-resnet18",
                         "--width", "0.5", "--dataset", "fashion-mnist", "--out", str(tmp_path / "x.safetensors"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "'conv1.weight' (as 'stem.0.weight') has shape (64, 1, 3, 3) in the file but (32, 1, 3, 3)" in lines[0]
    del rb["layer3.1.bn2.running_var"]
    torch.save(rb, tmp_path / "short.pt")
    code, out, err = cli(monkeypatch, capsys, "import", str(tmp_path / "short.pt"), "--arch", "preact-resnet18",
                         "--dataset", "fashion-mnist", "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "the model's tensor 'layer3.1.bn2.running_var' has no counterpart in the file" in err, err
    assert not (tmp_path / "x.safetensors").exists()




@pytest.mark.usefixtures("fmnist_available")
def test_a_robustbench_wideresnet_without_mu_sigma_takes_raw_pixels(tmp_path):
    import robustprune

    torch.save(rb_wideresnet_state(28, 4, in_ch=1), tmp_path / "trades.pt")  # TRADES-style WRN-28-4: no buffers
    res = robustprune.import_model(tmp_path / "trades.pt", arch="wrn-28-4", dataset="fashion-mnist",
                                   out=tmp_path / "w.safetensors", n_check=50, n_attack=10, attack_steps=2)
    norm = res.meta["import"]["normalization"]
    assert norm["mean"] == [0.0] and norm["std"] == [1.0] and norm["source"].startswith("none: RobustBench")
    assert res.model.normalize.std.flatten().tolist() == [1.0] and res.meta["std"] == [1.0]
    assert res.meta["import"]["key_map"] == "robustbench-wideresnet"
    print(f"import (RobustBench WRN-28-4 layout, random weights): clean {res.clean} APGD {res.robust}")
    assert res.warnings and "near chance" in res.warnings[0]  # untrained: said, not hidden


def rb_resnet18_state(classes: int = 10, seed: int = 0) -> dict:
    """RobustBench's / kuangliu's CIFAR ``ResNet18()`` (resnet.py): conv1 3x3, bn1, layer{1..4}.{0,1}.(conv1, bn1,
    conv2, bn2, shortcut.0/.1 when the shape changes), linear."""
    g = torch.Generator().manual_seed(seed)
    s: dict = {"conv1.weight": _conv(64, 3, 3, g)}
    _bn_state(s, "bn1.", 64, g)
    c_in = 64
    for layer, planes in enumerate((64, 128, 256, 512), 1):
        for i in range(2):
            p, stride = f"layer{layer}.{i}.", (1 if layer == 1 or i else 2)
            s[p + "conv1.weight"] = _conv(planes, c_in, 3, g)
            _bn_state(s, p + "bn1.", planes, g)
            s[p + "conv2.weight"] = _conv(planes, planes, 3, g)
            _bn_state(s, p + "bn2.", planes, g)
            if stride != 1 or c_in != planes:
                s[p + "shortcut.0.weight"] = _conv(planes, c_in, 1, g)
                _bn_state(s, p + "shortcut.1.", planes, g)
            c_in = planes
    s["linear.weight"] = 0.05 * torch.randn(classes, 512, generator=g)
    s["linear.bias"] = 0.1 * torch.randn(classes, generator=g)
    return s


def rb_resnet_forward(s: dict, x: torch.Tensor) -> torch.Tensor:
    """RobustBench's ResNet.forward with BasicBlock, as a function of its state dict."""
    out = F.relu(_bn(F.conv2d(x, s["conv1.weight"], padding=1), s, "bn1."))
    for layer in range(1, 5):
        for i in range(2):
            p, st = f"layer{layer}.{i}.", (1 if layer == 1 or i else 2)
            o = F.relu(_bn(F.conv2d(out, s[p + "conv1.weight"], stride=st, padding=1), s, p + "bn1."))
            o = _bn(F.conv2d(o, s[p + "conv2.weight"], padding=1), s, p + "bn2.")
            sc = _bn(F.conv2d(out, s[p + "shortcut.0.weight"], stride=st), s, p + "shortcut.1.") \
                if p + "shortcut.0.weight" in s else out
            out = F.relu(o + sc)
    return F.linear(out.mean((2, 3)), s["linear.weight"], s["linear.bias"])


def test_the_issue_s_dataparallel_resnet18_with_an_ema_beside_it():
    """``{'state_dict': {'module.conv1.weight': ...}, 'ema': ...}`` as DataParallel training scripts write it."""
    from robustprune.checkpoint_import import find_state_dict

    rb, ema = rb_resnet18_state(), rb_resnet18_state(seed=1)
    obj = {"state_dict": {f"module.{k}": v for k, v in rb.items()}, "ema": {f"module.{k}": v for k, v in ema.items()},
           "epoch": 99}
    assert find_state_dict(obj)[1:] == (["state_dict"], ["ema"])  # the first container; the other one is said
    model, record, _ = _fit("resnet18", obj)
    assert record["key_map"] == "robustbench-resnet"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, ref = model(x), rb_resnet_forward(rb, x)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    state, path, _ = find_state_dict(obj, "ema")
    assert path == ["ema"] and torch.equal(state["module.linear.weight"], ema["linear.weight"])


def dm_state(preact: bool, channels: list[int], blocks: int, in_ch: int = 3, classes: int = 10, seed: int = 0) -> dict:
    """RobustBench's DeepMind nets (dm_wide_resnet.py): DMWideResNet (``init_conv``, ``layer.{g}.block.{i}``
    (batchnorm_0, conv_0, batchnorm_1, conv_1, 1x1 ``shortcut`` when in != out), ``batchnorm``, ``logits``) or
    DMPreActResNet (``conv_2d``, ``layer_{g}.{i}`` (batchnorm_0, conv_2d_1, batchnorm_1, conv_2d_2, 3x3 ``shortcut``
    when the shape changes)). ``channels``: stem, then one per stage."""
    g = torch.Generator().manual_seed(seed)
    s: dict = {("conv_2d" if preact else "init_conv") + ".weight": _conv(channels[0], in_ch, 3, g)}
    c_in = channels[0]
    for gi, c_out in enumerate(channels[1:]):
        for i in range(blocks):
            p = f"layer_{gi}.{i}." if preact else f"layer.{gi}.block.{i}."
            stride = 2 if gi > 0 and i == 0 else 1
            _bn_state(s, p + "batchnorm_0.", c_in, g)
            s[p + ("conv_2d_1" if preact else "conv_0") + ".weight"] = _conv(c_out, c_in, 3, g)
            _bn_state(s, p + "batchnorm_1.", c_out, g)
            s[p + ("conv_2d_2" if preact else "conv_1") + ".weight"] = _conv(c_out, c_out, 3, g)
            if (stride != 1 or c_in != c_out) if preact else c_in != c_out:
                s[p + "shortcut.weight"] = _conv(c_out, c_in, 3 if preact else 1, g)
            c_in = c_out
    _bn_state(s, "batchnorm.", c_in, g)
    s["logits.weight"] = 0.05 * torch.randn(classes, c_in, generator=g)
    s["logits.bias"] = 0.1 * torch.randn(classes, generator=g)
    return s


def dm_forward(s: dict, x: torch.Tensor, preact: bool, stages: int, blocks: int) -> torch.Tensor:
    """_Block.forward / _PreActBlock.forward and the nets' forward of dm_wide_resnet.py (Swish = x * sigmoid(x),
    SAME padding: (1, 1, 1, 1) at stride 1, (0, 1, 0, 1) at stride 2) as functions of the state dict."""
    def pad(v, stride):
        return F.pad(v, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))

    out = F.conv2d(x, s[("conv_2d" if preact else "init_conv") + ".weight"], padding=1)
    for gi in range(stages):
        for i in range(blocks):
            p, st = (f"layer_{gi}.{i}." if preact else f"layer.{gi}.block.{i}."), (2 if gi > 0 and i == 0 else 1)
            has = p + "shortcut.weight" in s
            a = F.silu(_bn(out, s, p + "batchnorm_0."))
            if preact:
                sc = F.conv2d(pad(out, st), s[p + "shortcut.weight"], stride=st) if has else out
            else:
                sc = F.conv2d(a, s[p + "shortcut.weight"], stride=st) if has else out
            o = F.conv2d(pad(a, st), s[p + ("conv_2d_1" if preact else "conv_0") + ".weight"], stride=st)
            w2 = s[p + ("conv_2d_2" if preact else "conv_1") + ".weight"]
            o = F.conv2d(F.silu(_bn(o, s, p + "batchnorm_1.")), w2, padding=1)
            out = o + sc
    out = F.silu(_bn(out, s, "batchnorm."))
    return F.linear(out.mean((2, 3)), s["logits.weight"], s["logits.bias"])


@pytest.mark.parametrize("arch,preact", [("dm-wrn-70-16", False), ("dm-preact-resnet18", True)])
def test_deepmind_checkpoints_compute_what_robustbench_computes(arch, preact):
    from robustprune.checkpoint_import import find_state_dict, fit_state, strip_prefixes
    from robustprune.models import create_model

    width = 0.125  # the same layout at 1/8 of the channels, for speed (the stem scales with it)
    if preact:
        ch, blocks = [8, 8, 16, 32, 64], 2
    else:
        ch, blocks = [2, 32, 64, 128], 11
    dm = dm_state(preact, ch, blocks)
    state, _, _ = find_state_dict({"model_state_dict": {f"module.{k}": v for k, v in dm.items()}})
    state, _ = strip_prefixes(state)
    model = create_model(arch, in_channels=3, input_size=32, width=width).eval()
    record = fit_state(state, model, what=arch, src="test file", arch=arch)
    assert record["key_map"] == ("deepmind-preactresnet" if preact else "deepmind-wideresnet")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, ref = model(x), dm_forward(dm, x, preact, len(ch) - 1, blocks)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    from robustprune.errors import CheckpointError

    with pytest.raises(CheckpointError, match="--arch dm-wrn-28-10"):  # the plain WRN refuses it and says which
        _fit("wrn-28-10", dm)
