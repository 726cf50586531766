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
