"""``adaptome codegen ...``: generate, execute, serve, pass-at-k, plansearch, train.

Thin: each command parses options, calls the library and prints a summary. Errors a user can
cause print as one line (``core.cli_errors.user_errors``, exit code 2).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer

from adaptome.core.cli_errors import fail, user_errors

app = typer.Typer(help="Low-resource code generation (R, Racket): generation, sandboxed execution, pass@k, "
                  "PLANSEARCH, adapter training.\n\nExample: adaptome codegen generate --problems humaneval-r "
                  "--n 4 --out runs/codegen/gen", no_args_is_help=True)

PROBLEMS_HELP = ("a shipped set (humaneval-r, humaneval-rkt, mbpp-r, mbpp-rkt) or a JSONL of "
                 "{name, language, prompt, tests}")


def _problems(sources: list[str], limit: Optional[int]):
    from adaptome.domains.codegen.problems import load_problems

    probs = [p for s in sources for p in load_problems(s)]
    names = [p.name for p in probs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        fail(f"problem names repeat across the problems files: {', '.join(dup[:5])}")
    return probs[:limit] if limit else probs


@contextlib.contextmanager
def _sigterm_stops():
    """SIGTERM (``kill``, a batch scheduler's time limit) ends ``execute`` as Ctrl-C does: the running programs
    are killed and their cgroups removed. Python's default would end the harness on the spot, leaving the
    cgroups (and, at the ``rlimits`` level, ``setsid`` daemons) behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _limits(timeout: float, memory_mb: int, max_procs: int, cpu_s: Optional[int], max_output_mb: float = 0.0):
    from adaptome.domains.codegen.sandbox import Limits

    return Limits(timeout_s=timeout, cpu_s=cpu_s or max(1, int(timeout)), memory_mb=memory_mb, max_procs=max_procs,
                  max_output_bytes=int(max_output_mb * (1 << 20)))


@app.command()
def generate(
    problems: List[str] = typer.Option(..., help=PROBLEMS_HELP),
    out: Path = typer.Option(..., help="output folder (generate_config.json, completions.jsonl)"),
    model: str = typer.Option("tiny", help="tiny, a local model folder, or a hub id (or the model name for --url)"),
    url: str = typer.Option("", help="base URL of an OpenAI-compatible server (completions API) "
                            "instead of a local model"),
    prompt_builder: str = typer.Option("zero-shot", help="zero-shot | few-shot | translation | reference"),
    n: int = typer.Option(1, help="completions per problem"),
    batch_size: int = typer.Option(8, help="completions per backend call"),
    temperature: float = typer.Option(0.2, help="0 = greedy"),
    top_p: float = typer.Option(0.95),
    max_tokens: int = typer.Option(256, help="new tokens per completion"),
    seed: int = typer.Option(0),
    limit: Optional[int] = typer.Option(None, help="only the first N problems"),
    overwrite: bool = typer.Option(False, help="start again instead of resuming"),
) -> None:
    """Sample n completions per problem (stop tokens applied); an interrupted run resumes.

    Example: adaptome codegen generate --problems humaneval-rkt --n 4 --temperature 0.8 --out runs/cg/gen
    """
    from adaptome.domains.codegen.backends import make_backend
    from adaptome.domains.codegen.generate import GenerateConfig, run_generate
    from adaptome.domains.codegen.prompts import PROMPT_BUILDERS

    with user_errors():
        PROMPT_BUILDERS.get(prompt_builder)
        if temperature == 0 and top_p not in (GenerateConfig.top_p, 1.0):  # 1.0: no nucleus, what scripts pass
            fail(f"--top-p {top_p:g}: has no effect with --temperature 0 (greedy decoding takes the most likely "
                 "token, nothing is sampled); leave --top-p out, or give a temperature above 0")
        probs = _problems(problems, limit)
        cfg = GenerateConfig(model=model, url=url, prompt_builder=prompt_builder, n=n, batch_size=batch_size,
                             temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        backend = make_backend(model, url or None, api_model=model, seed=seed)
        summary = run_generate(probs, backend, cfg, out, overwrite=overwrite)
    typer.echo(json.dumps(summary, indent=1))


@app.command()
def execute(
    problems: List[str] = typer.Option(..., help=PROBLEMS_HELP),
    completions: Path = typer.Option(..., help="a generate/plansearch folder, or a JSONL of {name, completions}"),
    out: Path = typer.Option(..., help="folder for <name>.results.json (MultiPL-E format)"),
    workers: int = typer.Option(2, help="programs run at once"),
    timeout: float = typer.Option(15.0, help="wall-clock seconds per program"),
    memory_mb: int = typer.Option(512, help="memory per program"),
    max_procs: int = typer.Option(32, help="processes per program"),
    cpu_s: Optional[int] = typer.Option(None, help="CPU seconds per process (default: the timeout)"),
    max_output_mb: float = typer.Option(0.0, help="end a program whose stdout + stderr pass this many MB, graded "
                                        "OutputLimit (0: never, as MultiPL-E, which keeps the first 2 KB and "
                                        "grades the exit status; the timeout ends a program printing forever)"),
    isolation: str = typer.Option("auto", help="auto | namespaces | userns | rlimits (weaker levels for testing)"),
    overwrite: bool = typer.Option(False, help="remove results in --out of problems that are not in this run "
                                   "(without it such a folder is refused)"),
) -> None:
    """Run every completion in the sandbox and grade it as MultiPL-E does.

    Example: adaptome codegen execute --problems humaneval-r --completions runs/codegen/gen --out runs/codegen/exec
    """
    from adaptome.domains.codegen import isolation as iso
    from adaptome.domains.codegen.execute import execute_run
    from adaptome.domains.codegen.generate import prompt_mismatches, read_completions, shortfall

    with user_errors():
        # bad options first
        lim, isol = _limits(timeout, memory_mb, max_procs, cpu_s, max_output_mb), iso.detect(isolation)
        probs = _problems(problems, None)
        comps = read_completions(completions)
        unknown = sorted(set(comps) - {p.name for p in probs})
        if unknown:
            fail(f"{completions}: completions for problems not in --problems: {', '.join(unknown[:5])}")
        if completions.is_dir():
            other = prompt_mismatches(completions, probs)
            if other:
                fail(f"{completions}: {len(other)} problem(s) were generated from another language or prompt than "
                     f"--problems gives them (e.g. {', '.join(other[:3])}); pass the problems it was generated for")
        short = shortfall(completions, comps)
        if short:
            name, (have, want) = next(iter(short.items()))
            typer.echo(f"warning: {completions} is an unfinished generate run: {len(short)} problem(s) have fewer "
                       f"completions than its n = {want} (e.g. {name}: {have}); run generate again to finish it",
                       err=True)
        with _sigterm_stops():
            summary = execute_run(probs, comps, out, workers=workers, limits=lim, isolation=isol, overwrite=overwrite)
        summary["unfinished_generation"] = short
    typer.echo(json.dumps(summary, indent=1))


@app.command()
def serve(
    model: str = typer.Option("tiny", help="tiny, a local model folder (e.g. codegen train's merged/), or a hub id"),
    port: int = typer.Option(8000, help="port on 127.0.0.1"),
    seed: int = typer.Option(0, help="seed of the tiny model's weights"),
) -> None:
    """Serve a local model behind the OpenAI-compatible completions API on 127.0.0.1.

    Example: adaptome codegen serve --model runs/codegen/train/merged --port 8000
    """
    from adaptome.domains.codegen.backends import LocalBackend
    from adaptome.domains.codegen.serve import make_server

    with user_errors():
        server = make_server(LocalBackend.load(model, seed=seed), port)
    typer.echo(f"serving {model} on http://127.0.0.1:{server.server_address[1]}/v1/completions (Ctrl-C stops)",
               err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("pass-at-k")
def pass_at_k_cmd(
    runs: List[str] = typer.Option(..., "--run", help="DATASET=FOLDER of .results.json (repeatable)"),
    out: Path = typer.Option(..., help="folder for pass_at_k.csv and pass_at_k.md"),
    k: List[int] = typer.Option([1, 10, 100], help="k values (repeatable)"),
    compare: Optional[List[str]] = typer.Option(None, help="two result folders A B for McNemar's test (give twice)"),
    outcome: str = typer.Option("first", help="McNemar per-problem outcome: first | any | majority"),
) -> None:
    """pass@k per dataset and k (n may differ per problem), and McNemar's test between two runs.

    Example: adaptome codegen pass-at-k --run humaneval-r=runs/cg/exec --out runs/cg/score --compare A --compare B
    """
    from adaptome.core.atomic import write_text_atomic
    from adaptome.domains.codegen.passk import mcnemar, pass_at_k_rows, read_run, write_tables

    with user_errors():
        rows = []
        for spec in runs:
            name, sep, folder = spec.partition("=")
            if not sep:
                name, folder = Path(spec).name, spec
            rows.extend(pass_at_k_rows(name, read_run(folder), tuple(dict.fromkeys(k))))  # --k 1 --k 1: one row
        csv_path, md_path = write_tables(rows, out)
        typer.echo(md_path.read_text())
        if compare:
            if len(compare) != 2:
                fail("--compare needs exactly two result folders (give --compare twice)")
            res = mcnemar(read_run(compare[0]), read_run(compare[1]), outcome)
            res.update(run_a=compare[0], run_b=compare[1])
            write_text_atomic(Path(out) / "mcnemar.json", json.dumps(res, indent=1, allow_nan=False))
            typer.echo(f"McNemar ({outcome}): {res['problems']} problems, only A {res['only_a']}, only B "
                       f"{res['only_b']}, p = {res['p_value']:.4g}, odds ratio {res['odds_ratio_text']}")
        else:  # an earlier comparison's file would sit beside tables of other runs
            (Path(out) / "mcnemar.json").unlink(missing_ok=True)


@app.command()
def plansearch(
    problems: List[str] = typer.Option(..., help=PROBLEMS_HELP),
    out: Path = typer.Option(..., help="output folder (log, completions, results, pass@k)"),
    alg: str = typer.Option("plansearch", help="plansearch | repeated (repeated sampling with as many codes)"),
    model: str = typer.Option("tiny"), url: str = typer.Option(""),
    num_observations: int = typer.Option(10), max_observation_k: int = typer.Option(2, help="S"),
    num_layers: int = typer.Option(2), num_second_observations: int = typer.Option(3),
    without_fix: bool = typer.Option(False), without_pseudocode: bool = typer.Option(False),
    without_plan: bool = typer.Option(False),
    num_completions: int = typer.Option(-1, help="codes kept per problem: -1 all, else at most this many "
                                        "(--alg repeated draws as many as PLANSEARCH keeps)"),
    idea_temperature: float = typer.Option(0.9), code_temperature: float = typer.Option(0.9),
    top_p: float = typer.Option(0.95), observation_tokens: int = typer.Option(64),
    plan_tokens: int = typer.Option(256), code_tokens: int = typer.Option(512), seed: int = typer.Option(0),
    limit: Optional[int] = typer.Option(None, help="only the first N problems"),
    workers: int = typer.Option(2), timeout: float = typer.Option(15.0),
    execute_codes: bool = typer.Option(True, "--execute/--no-execute", help="run the codes in the sandbox"),
) -> None:
    """PLANSEARCH: observations -> subsets -> 2nd-order observations -> plans (+ critique/fix) -> pseudocode -> code.

    Example: adaptome codegen plansearch --problems humaneval-r --limit 5 --num-observations 4 --out runs/cg/ps
    """
    from adaptome.domains.codegen.backends import make_backend
    from adaptome.domains.codegen.execute import execute_run
    from adaptome.domains.codegen.generate import read_completions
    from adaptome.domains.codegen.passk import pass_at_k_rows, read_run, write_tables
    from adaptome.domains.codegen.plansearch import (
        PlanSearchConfig,
        ignored_options,
        kept_codes,
        repeated_sampling,
        run_plansearch,
    )

    with user_errors():
        if alg not in ("plansearch", "repeated"):
            fail(f"--alg {alg!r}: choose plansearch or repeated")
        try:
            cfg = PlanSearchConfig(num_observations, max_observation_k, num_layers, num_second_observations,
                                   without_fix, without_pseudocode, without_plan, num_completions, idea_temperature,
                                   code_temperature, top_p, observation_tokens, plan_tokens, code_tokens, seed)
        except ValueError as e:
            fail(str(e))
        unused = [f"--{name.replace('_', '-')}: {why}" for name, _, why in
                  (u.partition(": ") for u in ignored_options(cfg, alg))]  # named as the flags the user typed
        if unused and alg == "repeated":  # the baseline is run with PLANSEARCH's flags (README): said, not refused
            typer.echo("warning: has no effect: " + "; ".join(unused), err=True)
        elif unused:
            fail("has no effect: " + "; ".join(unused) + "; leave these options out")
        lim = _limits(timeout, 512, 32, None)  # before the search: a bad --timeout must not wait for it
        probs = _problems(problems, limit)
        backend = make_backend(model, url or None, api_model=model, seed=seed)
        if alg == "plansearch":
            summary = run_plansearch(probs, backend, cfg, out)
        else:
            summary = repeated_sampling(probs, backend, kept_codes(cfg), out, code_temperature, top_p, code_tokens,
                                        seed)
        if execute_codes:
            summary["execution"] = execute_run(probs, read_completions(out), out / "results", workers=workers,
                                               limits=lim, overwrite=True)
            rows = pass_at_k_rows(alg, read_run(out / "results"), (1, 10, 100))
            write_tables(rows, out)
            summary["pass_at_k"] = rows
    typer.echo(json.dumps(summary, indent=1))


@app.command()
def train(
    data: List[str] = typer.Option(..., help="folder of .r/.rkt files, {prompt, solution} JSONL, or translation "
                                   "{source, target, target_language} JSONL (repeatable)"),
    out: Path = typer.Option(..., help="output folder (adapter/, merged/, metrics.jsonl, summary.json)"),
    model: str = typer.Option("tiny"),
    method: str = typer.Option("lora", help="any registered adapter (adaptome adapters list)"),
    options: str = typer.Option('{"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}',
                                help="adapter options as JSON"),
    eval_problems: Optional[List[str]] = typer.Option(None, help="more problems files the data must not overlap"),
    block_size: int = typer.Option(512), max_steps: int = typer.Option(100), batch_size: int = typer.Option(8),
    lr: float = typer.Option(2e-3), warmup_steps: int = typer.Option(10), seed: int = typer.Option(0),
    holdout: float = typer.Option(0.0, help="share of the examples kept out of training (drawn with --seed); "
                                  "summary.json reports their loss before and after (heldout_loss_*)"),
    overwrite: bool = typer.Option(False, help="start again: replace adapter/ and merged/, remove the folder's "
                                   "checkpoints/ and metrics.jsonl (without it a stopped run resumes)"),
) -> None:
    """Fine-tune an adapter on R / Racket code (or translation pairs); refuses data overlapping evaluation problems.

    Example: adaptome codegen train --data my_r_code/ --data pairs.jsonl --max-steps 200 --out runs/cg/train
    """
    from adaptome.domains.codegen.train import CodegenTrainConfig, run_train

    with user_errors():
        try:
            opts = json.loads(options)
        except json.JSONDecodeError as e:
            fail(f"--options is not JSON: {e.msg}")
        if not isinstance(opts, dict):
            fail("--options must be a JSON object")
        cfg = CodegenTrainConfig(model=model, data=list(data), eval_problems=list(eval_problems or []), method=method,
                                 adapter_options=opts, block_size=block_size, output_dir=str(out),
                                 max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                 seed=seed, holdout=holdout)
        summary = run_train(cfg, overwrite=overwrite)
    typer.echo(json.dumps(summary, indent=1))
