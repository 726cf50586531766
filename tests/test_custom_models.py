"""A user's own model: load_factory("package.module:factory") with a one-line error for every bad spec."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from robustprune.errors import ConfigError
from robustprune.models.custom import build_model, load_factory


@pytest.fixture()
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "lenet.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self, classes=10):
                super().__init__()
                self.fc = nn.Linear(28 * 28, classes)
            def forward(self, x):
                return self.fc(torch.flatten(x, 1))

        def build(classes=10):
            return Tiny(classes)

        def broken():
            raise RuntimeError("bad width")

        def not_a_model():
            return {"fc": 1}

        WIDTH = 3
    """))
    (pkg / "fails.py").write_text("import not_installed_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mynets"
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        del sys.modules[name]


def test_load_factory_builds_the_users_model(user_pkg):
    model = load_factory("mynets.lenet:build")()
    assert isinstance(model, nn.Module) and model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("mynets.lenet:Tiny", classes=4)(torch.rand(1, 1, 28, 28)).shape == (1, 4)


@pytest.mark.parametrize("spec,match", [
    ("mynets.lenet", "must look like package.module:factory"),
    ("mynets.lenet:", "must look like"),
    ("no_such_pkg_xyz.nets:build", "cannot import module 'no_such_pkg_xyz.nets'"),
    ("mynets.fails:build", "importing 'mynets.fails'.*not_installed_anywhere_xyz"),
    ("mynets.lenet:missing", "has no attribute 'missing'.*build"),
    ("mynets.lenet:WIDTH", "is a int, not a function or class"),
])
def test_bad_specs_give_one_line_errors(user_pkg, spec, match):
    with pytest.raises(ConfigError, match=match) as exc:
        load_factory(spec)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("spec,match", [
    ("mynets.lenet:broken", "calling model factory 'mynets.lenet:broken' failed: RuntimeError: bad width"),
    ("mynets.lenet:not_a_model", "returned a dict, not an nn.Module"),
])
def test_factories_that_do_not_return_a_model(user_pkg, spec, match):
    factory = load_factory(spec)
    with pytest.raises(ConfigError, match=match) as exc:
        factory()
    assert "\n" not in str(exc.value)
