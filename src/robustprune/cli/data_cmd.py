"""`robustprune data fetch`: the datasets that are not packaged, downloaded and verified in one command (see
:mod:`robustprune.data.fetch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Get datasets: `robustprune data fetch cifar10|cifar100|svhn [--to DIR]`.",
                  no_args_is_help=True, add_completion=False)


@app.command("fetch")
def fetch(
    dataset: Annotated[str, typer.Argument(help="cifar10, cifar100 or svhn.")],
    to: Annotated[Optional[Path], typer.Option(help="Folder to put it in (default: ./data); pass it as --data-dir.")
                  ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the --data-dir line.")] = False,
) -> None:
    """Download a dataset from its official address, verify the published MD5, unpack it (a failed or partial
    download leaves nothing), and print the --data-dir to use."""
    from robustprune.data.fetch import fetch_dataset

    where = fetch_dataset(dataset, to, log=None if quiet else typer.echo)
    typer.echo(f"--data-dir {where}")
