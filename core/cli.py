"""The ``adaptome`` command: core commands plus one sub-app per domain.

Entry points stay thin: each command parses its options, calls a library function and prints a
summary. Domain sub-apps come from the installed domain plug-ins (``core/plugins.py``, entry point
group ``adaptome.domains``); core names none of them. Sub-apps keep heavy imports inside their
commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="adaptome",
    help="Parameter- and memory-efficient training for protein, pathology, multilingual and code models.\n\n"
    "Example: adaptome quickstart --out runs/quickstart",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
adapters_app = typer.Typer(help="Adapter methods: list, merge, truncate.\n\nExample: adaptome adapters list",
                           no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@adapters_app.command("list")
def adapters_list() -> None:
    """List registered adapter methods: backend, what trains, parameter formula per linear layer.

    Example: adaptome adapters list
    """
    from rich.console import Console
    from rich.table import Table

    from adaptome.core.adapters import ADAPTERS

    table = Table(title="adapter methods (per targeted linear: in -> out)")
    for col in ("name", "backend", "what is trained", "trainable parameters", "merge"):
        table.add_column(col)
    for name in ADAPTERS.names():
        cls = ADAPTERS.get(name)
        table.add_row(name, cls.backend, cls.trains, cls.param_formula, "yes" if cls.supports_merge else "no")
    Console().print(table)


@adapters_app.command("truncate")
def adapters_truncate(
    src: Path = typer.Argument(..., help="a saved DyLoRA adapter folder"),
    out: Path = typer.Argument(..., help="the folder to write (must not exist unless --overwrite)"),
    rank: int = typer.Option(..., "--rank", help="the rank k to keep (1..r)"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Write a rank-k copy of a DyLoRA adapter (same outputs as set_rank(model, k)).

    Example: adaptome adapters truncate runs/dylora/adapter runs/dylora/adapter-r2 --rank 2
    """
    from adaptome.core.adapters.truncate import truncate_adapter_dir
    from adaptome.core.cli_errors import user_errors

    with user_errors():
        path = truncate_adapter_dir(src, out, rank, overwrite=overwrite)
    typer.echo(f"wrote {path} (rank {rank})")


def _train_epilog() -> str:
    from adaptome.core.train.config import options_help

    return "Training options (--set train.<name>=value):\n\n" + options_help().replace("\n", "\n\n")


@app.command("train", epilog=_train_epilog())
def train_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="run YAML (see core/configs/train_example.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="override a key: --set train.lr=1e-4 (repeatable)"),
    overwrite: bool = typer.Option(False, help="replace the adapter/ and merged/ of an earlier run in the folder"),
) -> None:
    """Train an adapter on a causal-LM or masked-LM task from text or FASTA files.

    Runs as one process or under torchrun (every process joins the group; only the main one writes).
    A folder holding checkpoints of the same configuration is resumed; of another one, refused.

    Example: adaptome train --config run.yaml --set train.max_steps=200
    """
    from adaptome.core.cli_errors import user_errors
    from adaptome.core.config import load_config
    from adaptome.core.generic_train import RunConfig, run_generic

    with user_errors():
        cfg = load_config(RunConfig, config, set_)
        summary = run_generic(cfg, overwrite=overwrite)
    if summary:
        typer.echo(summary)


@app.command("quickstart")
def quickstart_cmd(
    out: Path = typer.Option(Path("runs/quickstart"), help="output folder"),
    steps: int = typer.Option(300, help="LoRA training steps for the core demo"),
    domains: Optional[str] = typer.Option(None, help="comma-separated domains to run (default: all that are ready)"),
    overwrite: bool = typer.Option(False, help="replace the outputs of an earlier quickstart in --out"),
) -> None:
    """Train, save, reload and merge a LoRA adapter on a tiny model with shipped data, then run each
    domain's demo. CPU only, a few minutes.

    Example: adaptome quickstart --out runs/quickstart
    """
    from adaptome.core.quickstart import run_quickstart

    try:
        run_quickstart(out, steps=steps, domains=[d for d in domains.split(",") if d] if domains else None,
                       overwrite=overwrite)
    except (ValueError, FileExistsError) as e:
        _fail(str(e))


def _add_domain_apps() -> None:
    from adaptome.core.plugins import discover

    for plugin in discover():
        app.add_typer(plugin.cli(), name=plugin.name, help=plugin.help)


def main() -> None:
    _add_domain_apps()
    app()


if __name__ == "__main__":
    main()
