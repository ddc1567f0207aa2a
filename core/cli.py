"""The ``adaptome`` command: core commands plus one sub-app per domain.

Entry points stay thin: each command parses its options, calls a library function and prints a
summary. Domain sub-apps come from the installed domain plug-ins (``core/plugins.py``, entry point
group ``adaptome.domains``); core names none of them. Sub-apps keep heavy imports inside their
commands.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import typer

app = typer.Typer(
    name="adaptome",
    help="Parameter- and memory-efficient training methods; each installed domain plug-in adds its commands.\n\n"
    "Example: adaptome quickstart --out runs/quickstart",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
adapters_app = typer.Typer(help="Adapter methods: list, export, merge, truncate.\n\nExample: adaptome adapters list",
                           no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
optimizers_app = typer.Typer(help="Optimizers a run's `optimizer:` section can name.\n\n"
                             "Example: adaptome optimizers list", no_args_is_help=True)
app.add_typer(optimizers_app, name="optimizers")


@adapters_app.command("list")
def adapters_list() -> None:
    """List registered adapter methods: backend, what trains, parameter formula per linear layer.

    Example: adaptome adapters list
    """
    from rich.console import Console
    from rich.table import Table

    from adaptome.core.adapters import ADAPTERS

    table = Table(title="adapter methods (per targeted linear: in -> out)")
    for col in ("name", "backend", "what is trained", "trainable parameters", "merge", "note"):
        table.add_column(col)
    for name in ADAPTERS.names():
        cls = ADAPTERS.get(name)
        table.add_row(name, cls.backend, cls.trains, cls.param_formula, "yes" if cls.supports_merge else "no",
                      cls.note)
    Console().print(table)
    from adaptome.core.adapters.from_scratch import PRETRAIN_METHODS

    table = Table(title="whole-model methods: every weight trains (sltrain: layers replaced, from scratch; "
                        "full: the loaded weights); adapter/ holds the whole model, merged/ a plain checkpoint")
    for col in ("name", "what is trained", "trainable parameters per linear", "paper"):
        table.add_column(col)
    for name in PRETRAIN_METHODS.names():
        cls = PRETRAIN_METHODS.get(name)
        table.add_row(name, cls.trains, cls.param_formula, cls.paper)
    Console().print(table)


@optimizers_app.command("list")
def optimizers_list() -> None:
    """List registered optimizers and their options (pick one with `optimizer: {name: ..., options: ...}`).

    Example: adaptome optimizers list
    """
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from adaptome.core.optim.registry import OPTIMIZERS

    table = Table(title="optimizers")
    for col in ("name", "what it does", "options (default)"):
        table.add_column(col)
    for name in OPTIMIZERS.names():
        cls = OPTIMIZERS.get(name)
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
        table.add_row(name, cls.summary, opts)
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


@adapters_app.command("export")
def adapters_export(
    src: Path = typer.Argument(..., help="a saved adaptome adapter folder"),
    out: Path = typer.Argument(..., help="the peft LoRA folder to write (must not exist unless --overwrite)"),
    to: str = typer.Option("peft-lora", "--to", help="output format (only peft-lora)"),
    base: Optional[str] = typer.Option(None, "--base", help="the base model (local path or hub id); default: the one "
                                       "the adapter folder records"),
    rank: Optional[int] = typer.Option(None, "--rank", help="DyLoRA: the rank k <= r to export"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Export a LoRA-family adapter (DyLoRA, SoRA, NOLA, LoRA-XS, LoRA-SB, LaMDA, ALLoRA, lora_native,
    lora) as a plain peft LoRA that PeftModel.from_pretrained loads.

    Example: adaptome adapters export --to peft-lora runs/nola/adapter runs/nola/peft-lora --base runs/base
    """
    from adaptome.core.adapters.export import ExportError, export_adapter_dir
    from adaptome.core.cli_errors import user_errors

    with user_errors():
        if to != "peft-lora":
            raise ExportError(f"--to {to!r}: the only export format is 'peft-lora'")
        report = export_adapter_dir(src, out, base=base, rank=rank, overwrite=overwrite)
    ranks = sorted(set(report.ranks.values()))
    typer.echo(f"wrote {report.path}: {report.method} as a peft LoRA, {report.layers} layers, "
               f"rank {'/'.join(map(str, ranks))}" + (f", {len(report.dropped)} layers dropped (rank 0)"
                                                      if report.dropped else ""))
    typer.echo(f"size: {report.size_line()}")


@adapters_app.command("merge")
def adapters_merge(
    adapters: list[Path] = typer.Argument(..., help="two or more peft LoRA folders"),
    method: str = typer.Option(..., "--method", help="lego, linear, cat, ties or dare"),
    out: Path = typer.Option(..., "--out", help="the merged peft LoRA folder (must not exist unless --overwrite)"),
    rank: Optional[int] = typer.Option(None, "--rank", help="rank k of the merged LoRA (not for cat)"),
    weights: Optional[str] = typer.Option(None, help="comma-separated weight per adapter (linear, cat, ties, dare)"),
    density: Optional[float] = typer.Option(None, help="ties / dare: fraction of entries kept"),
    variant: Optional[str] = typer.Option(None, help="dare: linear or ties"),
    seed: Optional[int] = typer.Option(None, help="lego: k-means seed; dare: drop seed"),
    reweight: Optional[bool] = typer.Option(None, "--reweight/--no-reweight", help="lego: dual reweighting"),
    basis: Optional[str] = typer.Option(None, help="lego: units from the trained ranks (raw) or each LoRA's SVD (svd)"),
    cluster_on: Optional[str] = typer.Option(None, help="lego: k-means on unit directions (default), raw units "
                                             "(units) or normalised rank-1 updates (updates)"),
    centroid: Optional[str] = typer.Option(None, help="lego: a cluster's rank from the mean factors (factors, "
                                           "default) or the top singular pair of its mean update (update)"),
    allow_different_bases: bool = typer.Option(False, help="merge LoRAs whose configs name different base models "
                                               "(e.g. one model under two names)"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Merge LoRAs into one peft LoRA (LoRA-LEGO rank-wise clustering, or linear / cat / TIES / DARE).

    Example: adaptome adapters merge --method lego runs/a/peft runs/b/peft runs/c/peft --rank 8 --out runs/merged
    """
    from adaptome.core.cli_errors import user_errors
    from adaptome.core.merge.api import merge_adapters
    from adaptome.core.merge.factors import MergeError

    with user_errors():
        options: dict = {}
        if weights is not None:
            try:
                options["weights"] = [float(w) for w in weights.split(",")]
            except ValueError:
                raise MergeError(f"--weights {weights!r}: give numbers separated by commas") from None
        for key, value in (("density", density), ("variant", variant), ("seed", seed), ("basis", basis),
                           ("cluster_on", cluster_on), ("centroid", centroid)):
            if value is not None:
                options[key] = value
        if reweight is not None:
            options.update(param_reweight=reweight, output_reweight=reweight)
        summary = merge_adapters(adapters, method, out, rank=rank, overwrite=overwrite,
                                 allow_different_bases=allow_different_bases, **options)
    typer.echo(f"wrote {out}: {method} merge of {len(adapters)} LoRAs (ranks {summary['ranks_in']}) at rank "
               f"{summary['rank'] or 'sum of ranks'}, {summary['modules']} modules; relative distance to the "
               f"weighted sum of their updates {summary['relative_distance_to_weighted_sum']:.3g}")


def _train_epilog() -> str:
    from adaptome.core.train.config import options_help

    return "Training options (--set train.<name>=value):\n\n" + options_help().replace("\n", "\n\n")


@app.command("train", epilog=_train_epilog())
def train_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="run YAML (see core/configs/train_example.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="override a key: --set train.lr=1e-4 (repeatable)"),
    overwrite: bool = typer.Option(False, help="replace the adapter/ and merged/ of an earlier run in the folder"),
) -> None:
    """Train an adapter on a causal-LM or masked-LM task from plain-text or JSONL files.

    Runs as one process or under torchrun (every process joins the group; only the main one writes;
    train.batch_size is per process): torchrun --nproc_per_node 2 -m adaptome.core.cli train --config run.yaml.
    A folder holding checkpoints of the same configuration is resumed; of another one, refused.

    Example: adaptome train --config run.yaml --set train.max_steps=200
    """
    from adaptome.core.cli_errors import user_errors
    from adaptome.core.config import load_config
    from adaptome.core.generic_train import RunConfig, run_generic

    with user_errors(), _error_once_under_torchrun():
        cfg = load_config(RunConfig, config, set_)
        summary = run_generic(cfg, overwrite=overwrite, source=str(config))
    if summary:
        typer.echo(summary)


@contextlib.contextmanager
def _error_once_under_torchrun() -> Iterator[None]:
    """Under ``torchrun``: a user error every process hits alike (same message) is printed by rank 0 alone, the
    other processes exit with the same status silently; an error only some processes hit is printed by each,
    as ``error: rank N: ...`` (``distributed.error_reported_by_rank0``). A single process: unchanged."""
    from adaptome.core.cli_errors import _os_message, fail
    from adaptome.core.errors import AdaptomeError
    from adaptome.core.train.distributed import error_reported_by_rank0, launched_rank, launched_world_size

    try:
        yield
    except (AdaptomeError, OSError) as e:
        if launched_world_size() == 1:
            raise
        message = str(e) if isinstance(e, AdaptomeError) else _os_message(e)
        if error_reported_by_rank0(message):
            raise typer.Exit(2) from None  # user_errors' status; rank 0 printed the line
        rank = launched_rank()
        if rank == 0 or message.startswith(f"rank {rank}:"):
            raise
        fail(f"rank {rank}: {message}")


@app.command("select-data")
def select_data_cmd(
    model: str = typer.Option(..., "--model", help="causal LM (local path or hub id) with its tokenizer"),
    train: list[Path] = typer.Option(..., "--train", help="JSONL pool to select from, field 'text' (repeatable)"),
    target: list[Path] = typer.Option(..., "--target", help="JSONL target examples; each file is a subtask unless "
                                      "records carry 'subtask' (repeatable)"),
    out: Path = typer.Option(..., "--out", help="JSONL of the selected examples with their 'less_score'"),
    percentage: float = typer.Option(0.05, help="share of the pool to select"),
    warmup_fraction: float = typer.Option(0.05, help="share of the pool the warm-up LoRA trains on"),
    epochs: int = typer.Option(4, help="warm-up epochs (one checkpoint each)"),
    lr: float = typer.Option(2e-5, help="warm-up learning rate"),
    batch_size: int = typer.Option(32, help="warm-up batch size"),
    lora_r: int = typer.Option(128, help="warm-up LoRA rank"),
    lora_alpha: float = typer.Option(512.0, help="warm-up LoRA alpha"),
    proj_dim: int = typer.Option(8192, help="gradient feature dimension"),
    max_length: int = typer.Option(512, help="tokens per example, the end token included (a longer text is cut "
                                             "to this many tokens, without the end token)"),
    seed: int = typer.Option(0, help="seed of the warm-up subset, training and projection"),
    work_dir: Optional[Path] = typer.Option(None, help="warm-up checkpoints (default: OUT.less-work)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out file"),
) -> None:
    """Select the training examples whose LoRA gradients best match the target examples (LESS).

    Example: adaptome select-data --model runs/base --train pool.jsonl --target dev.jsonl --out picked.jsonl
    """
    import json

    from adaptome.core.cli_errors import user_errors
    from adaptome.core.select.less import LessConfig, select_data

    with user_errors():
        cfg = LessConfig(percentage=percentage, warmup_fraction=warmup_fraction, warmup_epochs=epochs, lr=lr,
                         batch_size=batch_size, lora_r=lora_r, lora_alpha=lora_alpha, proj_dim=proj_dim,
                         max_length=max_length, seed=seed)
        summary = select_data(model, [str(p) for p in train], [str(p) for p in target], out, cfg,
                              work_dir=work_dir, overwrite=overwrite)
    summary.pop("config")
    typer.echo(json.dumps(summary, indent=2))


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
    from adaptome.core.cli_errors import fail, user_errors
    from adaptome.core.quickstart import run_quickstart

    with user_errors():
        results = run_quickstart(out, steps=steps, domains=[d for d in domains.split(",") if d] if domains else None,
                                 overwrite=overwrite)
    if not results["core"]["ok"]:
        fail(f"the core checks failed (see {out / 'summary.json'})", code=1)


@app.command("compress")
def compress_cmd(
    method: str = typer.Option(..., "--method", help="welore | lqlora | dsformer | lrt"),
    model: str = typer.Option(..., "--model", help="a transformers model folder (or hub id) with its tokenizer"),
    budget: Optional[float] = typer.Option(None, "--budget", help="welore / lrt / dsformer: fraction of the target "
                                           "parameters kept (0.5); lqlora: bits per parameter of Q (3)"),
    out: Path = typer.Option(..., "--out", help="folder to write (must not exist unless --overwrite)"),
    eval_text: Optional[Path] = typer.Option(None, "--eval-text", help="held-out .txt / FASTA for perplexity"),
    train_text: Optional[Path] = typer.Option(None, "--train-text", help="text for fine-tuning and Fisher weights"),
    targets: str = typer.Option("all-linear", help="all-linear | attention | mlp | attention+mlp | a regex"),
    finetune_steps: int = typer.Option(0, help="fine-tuning steps of what the method trains (0 = none)"),
    lr: float = typer.Option(1e-4, help="fine-tuning learning rate"),
    batch_size: int = typer.Option(8, help="fine-tuning batch size"),
    block_size: int = typer.Option(128, help="tokens per example"),
    set_: list[str] = typer.Option([], "--set", help="a method option: --set rank=16 (repeatable)"),
    seed: int = typer.Option(0, help="seed for masks, random inits and fine-tuning"),
    overwrite: bool = typer.Option(False, help="replace an existing --out folder"),
) -> None:
    """Compress a model's linear layers (WeLore, LQ-LoRA, DSFormer, low-rank transformer) and report
    per-matrix rank / bits / non-zeros and perplexity before and after.

    Example: adaptome compress --method welore --model runs/tiny --budget 0.5 --eval-text val.txt --out runs/welore
    """
    from adaptome.core.cli_errors import user_errors
    from adaptome.core.compress.run import run_compress

    with user_errors():
        report = run_compress(method, model, out, budget=budget, eval_text=str(eval_text) if eval_text else None,
                              train_text=str(train_text) if train_text else None, targets=targets,
                              finetune_steps=finetune_steps, lr=lr, batch_size=batch_size, block_size=block_size,
                              options=set_, overwrite=overwrite, seed=seed, progress=True)
    t = report["totals"]
    msg = (f"wrote {out}: {t['matrices']} matrices, parameters kept {t['kept_fraction_params']:.3f}, "
           f"{t['bits_per_param_after']:.3f} bits per original parameter")
    for key in ("perplexity_before", "perplexity_after", "perplexity_finetuned"):
        if key in report:
            msg += f"; {key.replace('_', ' ')} {report[key]:.3f}"
    typer.echo(msg)


def _add_domain_apps() -> None:
    from adaptome.core.plugins import discover

    for plugin in discover():
        app.add_typer(plugin.cli(), name=plugin.name, help=plugin.help)


def main() -> None:
    _add_domain_apps()
    app()


if __name__ == "__main__":
    main()
