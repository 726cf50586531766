"""Former home of the HTML report; kept so that old imports work. The report lives in ``robustprune.study.report``
(``page.py`` renders the HTML, ``tables.py`` builds the tables); this module only re-exports, so nothing imports
back into it."""

from robustprune.study.report import write_report
from robustprune.study.report.tables import robustness_table

__all__ = ["robustness_table", "write_report"]
