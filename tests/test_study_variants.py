"""A study can run variants of one method (``NAME@label``), each with its own settings, stored under its full name."""

from __future__ import annotations

import pytest

from robustprune.errors import ConfigError, RobustPruneError
from robustprune.study import load_study_spec
from robustprune.study.runner import StudyRunner
from robustprune.study.spec import method_of


def test_variants_have_their_own_settings_and_cells():
    spec = load_study_spec(None, {
        "methods": ["pwoa-irregular", "pwoa-irregular@ce", "anp-bbd@strong"], "compression": [1, 16],
        "method_rates": {}, "attacks": [{"name": "pgd", "eps": [0.1]}],
        "method_settings": {"pwoa-irregular@ce": {"alpha": 0.0, "ce_weight": 1.0, "use_hbar": False},
                            "anp-bbd@strong": {"gamma": 12.0}},
    })
    assert method_of("pwoa-irregular@ce") == "pwoa-irregular" and method_of("hydra") == "hydra"
    assert spec.rates_for("pwoa-irregular@ce") == [16.0] and spec.rates_for("anp-bbd@strong") == [None]
    plan = StudyRunner(spec, "/nonexistent").plan()
    assert plan["pruned_models"] == 3
    with pytest.raises(ConfigError, match="ce_wieght|ce_weight"):
        load_study_spec(None, {"methods": ["pwoa-irregular@ce"], "method_settings": {
            "pwoa-irregular@ce": {"ce_wieght": 1.0}}})
    with pytest.raises(RobustPruneError, match="pwoa-banana"):
        load_study_spec(None, {"methods": ["pwoa-banana@x"]})


def test_an_empty_study_file_says_it_runs_the_main_job(tmp_path):
    from robustprune.errors import RobustPruneWarning

    f = tmp_path / "empty.yaml"
    f.write_text("# nothing yet\n")
    with pytest.warns(RobustPruneWarning, match="empty: running the default study"):
        spec = load_study_spec(f)
    assert spec == load_study_spec(None)


def test_study_file_errors_are_one_line_with_the_place(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("methods: [hydra\nseeds: [0]\n")
    with pytest.raises(ConfigError, match="line 2"):
        load_study_spec(f)
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match="not a text file"):
        load_study_spec(f)
    f.write_text("seeds: [-1]\n")
    with pytest.raises(ConfigError, match="seeds"):
        load_study_spec(f)
    f.write_text("base_train: {epochs: 0}\n")
    with pytest.raises(ConfigError, match="untrained"):
        load_study_spec(f)
