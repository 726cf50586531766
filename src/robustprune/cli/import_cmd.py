"""`robustprune import`: another tool's weights file -> a checked robustprune checkpoint (see
:mod:`robustprune.checkpoint_import`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def _device(value: Optional[str]) -> Optional[str]:
    from robustprune.cli.main import _check_device

    return _check_device(value)


def _eps(value: Optional[str]) -> Optional[str]:
    from robustprune.cli.main import _check_eps

    return _check_eps(value)


def import_command(
    weights: Annotated[Path, typer.Argument(help="The weights file: .pt / .pth / .bin (torch.save) or .safetensors. "
                                                 "Never unpickled: it must hold tensors only.")],
    dataset: Annotated[str, typer.Option(help="Dataset the model was trained on (see `robustprune list datasets`); "
                                              "it is checked on its validation split.")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors, with a .json beside it).")],
    arch: Annotated[Optional[str], typer.Option(
        help="Registry architecture to load it into (see `robustprune list models`), e.g. wrn-28-10, "
             "preact-resnet18-rb, resnet18-tv.")] = None,
    model_factory: Annotated[Optional[str], typer.Option(
        "--model", help="package.module:factory building your own model instead of --arch.")] = None,
    width: Annotated[float, typer.Option(help="Width factor of --arch.")] = 1.0,
    mean: Annotated[Optional[str], typer.Option(
        help="Input normalisation mean when the file holds none, one value or one per channel (0.4914,0.4822,"
             "0.4465); default: the dataset's. --arch only.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Input normalisation std, as --mean (0 0 0 / 1 1 1: a model "
                                                    "trained on raw [0, 1] pixels).")] = None,
    container: Annotated[Optional[str], typer.Option(
        help="Dotted key of the state dict inside the file (default: the first of state_dict, model_state_dict, "
             "model, net, ema).")] = None,
    key_map: Annotated[Optional[str], typer.Option(
        help="Tensor-name map to use (none, robustbench-wideresnet, robustbench-preactresnet, robustbench-resnet, "
             "torchvision-resnet); default: the one that fits.")] = None,
    n_check: Annotated[int, typer.Option(help="Validation images for the clean accuracy.")] = 1000,
    n_attack: Annotated[int, typer.Option(help="Validation images attacked with APGD-CE + APGD-T (0: none).")] = 200,
    attack_steps: Annotated[int, typer.Option(help="APGD iterations per run.")] = 50,
    eps: Annotated[Optional[str], typer.Option(help="L-inf budget of the check (default: the dataset's).",
                                               callback=_eps)] = None,
    val_size: Annotated[int, typer.Option(help="Validation images carved from the training set (the split `prune` "
                                               "keeps out of training).")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the validation split and the attack.", min=0)] = 0,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset's files.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: CUDA when present)",
                                                  callback=_device)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the accuracies and warnings.")] = False,
) -> None:
    """Import a model trained elsewhere (RobustBench, torchvision, your own torch.save) as a robustprune checkpoint,
    checked on the validation split (clean and APGD accuracy) before it is kept."""
    from robustprune.checkpoint_import import import_model
    from robustprune.utils import parse_eps

    def log(msg: str) -> None:
        if msg.startswith("warning: "):
            typer.echo(msg, err=True)
        elif not quiet or msg.startswith(("clean accuracy", "saved ")):
            typer.echo(msg)

    res = import_model(weights, dataset=dataset, out=out, arch=arch, model=model_factory, width=width, mean=mean,
                       std=std, container=container, key_map=key_map, data_dir=data_dir, device=device,
                       n_check=n_check, n_attack=n_attack, attack_steps=attack_steps,
                       eps=None if eps is None else float(parse_eps(eps)), val_size=val_size, seed=seed,
                       command=["robustprune", *sys.argv[1:]], log=log)
    del res
