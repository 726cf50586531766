"""A deterministic failure in one method's cells, for the Ray tests: ``install()`` runs in every Ray worker
(``runtime_env={"worker_process_setup_hook": "ray_failing_cell.install"}``) and in the test process."""

from __future__ import annotations

FAILING = "random-filter-local"


def install() -> None:
    from robustprune.methods import get_method

    cls = type(get_method(FAILING))
    if getattr(cls, "_rp_failing", False):
        return
    real = cls.prune_many

    def prune_many(self, *args, **kwargs):
        if self.name == FAILING:
            raise ValueError(f"{FAILING} fails on purpose (a deterministic Python error in a cell)")
        return real(self, *args, **kwargs)

    cls.prune_many = prune_many
    cls._rp_failing = True
