"""The memory layout of each architecture in a study: a choice that changes the numbers (float rounding), so it
is made once per study, architecture and device type, stored in the database's meta (``layouts``), and used by
every cell, every Ray task and every rerun (:meth:`robustprune.study.runner.StudyRunner.decide_layouts`). Timing
the two layouts under load gives different answers from one moment to the next; the stored choice does not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustprune.study.runner import StudyRunner


def measure_layouts(runner: StudyRunner, pairs: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """``{device|dataset|arch: {"channels_last": bool, "why": str}}`` for ``pairs`` on the runner's device: bf16 on
    CUDA always takes channels_last, a model without convolutions never does, otherwise a forward + backward pass
    is timed in both layouts (:func:`robustprune.precision.faster_layout`) on a training batch."""
    from robustprune.data import load_splits
    from robustprune.precision import faster_layout, is_convolutional, use_channels_last

    spec = runner.spec
    out: dict[str, dict[str, Any]] = {}
    loaded: dict[str, Any] = {}
    for dataset, arch in pairs:
        if dataset not in loaded:
            loaded[dataset] = load_splits(dataset, data_dir=spec.data_dir, val_size=spec.val_size, seed=spec.seeds[0],
                                          device=runner.device, train_limit=spec.train_limit, test_limit=spec.eval_n)
        splits = loaded[dataset]
        model = runner._build(arch, splits)
        key = runner._layout_key(dataset, arch)
        if use_channels_last(model, runner.train_precision, runner.device):
            out[key] = {"channels_last": True, "why": "bf16 on CUDA"}
        elif not is_convolutional(model):
            out[key] = {"channels_last": False, "why": "no convolutions"}
        else:
            cl, speedup = faster_layout(model, splits.train.x[: spec.base_train.batch_size])
            out[key] = {"channels_last": cl, "why": f"a forward + backward pass measured {speedup:.2f}x as fast in "
                                                    "channels_last"}
    return out


def measure_layouts_task(spec_json: dict[str, Any], pairs: list[tuple[str, str]], device: str | None,
                         threads: int | None) -> dict[str, dict[str, Any]]:
    """:func:`measure_layouts` as a Ray task, on a worker's device type (the driver may have no GPU)."""
    import tempfile

    import torch

    from robustprune.study.runner import StudyRunner
    from robustprune.study.spec import StudySpec

    if threads:
        torch.set_num_threads(int(threads))
    with tempfile.TemporaryDirectory(prefix="robustprune-layouts-") as tmp:
        runner = StudyRunner(StudySpec.model_validate(spec_json), tmp, device=device, log=lambda m: None,
                             progress=False)
        return measure_layouts(runner, [tuple(p) for p in pairs])
