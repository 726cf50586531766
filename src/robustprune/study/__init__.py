"""Studies: a validated spec, the runner that loops over the pipeline, the results store and the report."""

from robustprune.study.evaluate import evaluate_attacks, size_metrics
from robustprune.study.report import write_report
from robustprune.study.runner import StudyOutcome, StudyRunner, code_version, run_study
from robustprune.study.spec import AttackSpec, ObjectiveSpec, StudySpec, load_study_spec
from robustprune.study.store import RESULT_COLUMNS, ResultsStore

__all__ = [
    "RESULT_COLUMNS",
    "AttackSpec",
    "ObjectiveSpec",
    "ResultsStore",
    "StudyOutcome",
    "StudyRunner",
    "StudySpec",
    "code_version",
    "evaluate_attacks",
    "load_study_spec",
    "run_study",
    "size_metrics",
    "write_report",
]
