"""Codegen quickstart: a tiny model, a few shipped MultiPL-E problems, the sandbox, pass@k. CPU, about a minute.

1. A tiny LLaMA (random weights, character tokenizer) samples 4 completions for each of 3 R and
   3 Racket HumanEval problems, zero-shot and few-shot.
2. Every program runs in the sandbox (the isolation level used is printed), next to the
   hand-written reference solutions of the same problems (the baseline that must pass).
3. pass@1 per run, McNemar's test model vs reference, and one PLANSEARCH run on one problem with
   small parameters (the counts of nodes, plans and codes, all codes executed).

Not covered: a model that can actually solve the problems (no hub here); see the README for
``--model`` / ``--url`` with a real code model.
"""

from __future__ import annotations

import json
from pathlib import Path


def run(out_dir: Path) -> dict:
    from rich.console import Console
    from rich.table import Table

    from adaptome.domains.codegen import isolation as iso
    from adaptome.domains.codegen.backends import LocalBackend
    from adaptome.domains.codegen.execute import execute_run
    from adaptome.domains.codegen.generate import GenerateConfig, read_completions, run_generate
    from adaptome.domains.codegen.languages import get_language, require_interpreter
    from adaptome.domains.codegen.passk import mcnemar, pass_at_k_rows, read_run, write_tables
    from adaptome.domains.codegen.plansearch import PlanSearchConfig, expected_counts, run_plansearch
    from adaptome.domains.codegen.problems import load_completions, load_problems
    from adaptome.domains.codegen.sandbox import Limits

    console = Console()
    out = Path(out_dir)
    for lang in ("r", "rkt"):
        require_interpreter(get_language(lang))
    isolation = iso.detect()
    limits = Limits(timeout_s=10.0, cpu_s=10)
    ref_dir = Path(__file__).parent / "data" / "reference"
    refs = {lang: load_completions(ref_dir / f"{lang}.jsonl") for lang in ("r", "rkt")}
    r_probs = [p for p in load_problems("humaneval-r") if p.name in refs["r"]][:3]
    taken = {p.name for p in r_probs}  # result files are named by problem: keep the names distinct
    rkt_probs = [p for p in load_problems("humaneval-rkt") if p.name in refs["rkt"] and p.name not in taken][:3]
    problems = r_probs + rkt_probs
    runs = {}
    backend = LocalBackend.load("tiny", seed=0)
    for builder in ("zero-shot", "few-shot"):
        gen = out / f"generate_{builder}"
        run_generate(problems, backend, GenerateConfig(prompt_builder=builder, n=4, batch_size=4, temperature=0.8,
                                                       max_tokens=48), gen, overwrite=True, progress=False)
        execute_run(problems, read_completions(gen), out / f"results_{builder}", workers=2, limits=limits,
                    isolation=isolation, progress=False)
        runs[f"tiny {builder}"] = out / f"results_{builder}"
    ref_comps = {p.name: refs[p.language][p.name] for p in problems}
    execute_run(problems, ref_comps, out / "results_reference", workers=2, limits=limits, isolation=isolation,
                progress=False)
    runs["reference solutions"] = out / "results_reference"
    rows = []
    for name, folder in runs.items():
        rows.extend(pass_at_k_rows(name, read_run(folder), (1,)))
    write_tables(rows, out)
    ps_cfg = PlanSearchConfig(num_observations=2, max_observation_k=1, num_layers=2, num_second_observations=1,
                              observation_tokens=12, plan_tokens=16, code_tokens=32)
    ps = run_plansearch(problems[:1], backend, ps_cfg, out / "plansearch", progress=False)
    ps_exec = execute_run(problems[:1], read_completions(out / "plansearch"), out / "plansearch" / "results",
                          workers=2, limits=limits, isolation=isolation, progress=False)

    table = Table(title="pass@1 (4 samples per problem for the tiny model, 1 reference solution)")
    for col in ("run", "pass@1", "problems", "majority outcome"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["dataset"], f"{100 * r['estimate']:.1f}%", str(r["num_problems"]),
                      f"{r['majority_outcome']} ({100 * r['majority_rate']:.0f}%)")
    console.print(f"[bold]codegen[/]: sandbox isolation [bold]{isolation.level}[/] "
                  f"(memory: {isolation.describe()['memory']}, processes: {isolation.describe()['processes']}, "
                  f"runs as uid {isolation.run_as}); {len(problems)} problems "
                  f"({', '.join(p.name + '/' + p.language for p in problems)})")
    console.print(table)
    mc = mcnemar(read_run(runs["reference solutions"]), read_run(runs["tiny zero-shot"]))
    console.print(f"McNemar reference vs tiny zero-shot (first sample): only reference {mc['only_a']}, "
                      f"only tiny {mc['only_b']}, p = {mc['p_value']:.3g}")
    counts = expected_counts(ps_cfg)
    console.print(f"PLANSEARCH on {problems[0].name}: {counts['nodes']} observation subsets, {counts['plans']} plans "
                  f"(original + fixed), {sum(ps['codes'].values())} codes, all executed: "
                  f"{ps_exec['status_counts']}; steps logged in plansearch/plansearch_log.jsonl")
    summary = {"isolation": isolation.describe(), "pass_at_1": {r["dataset"]: r["estimate"] for r in rows},
               "mcnemar_reference_vs_tiny": {k: mc[k] for k in ("only_a", "only_b", "p_value")},
               "plansearch": {"expected": counts, "codes": ps["codes"], "status_counts": ps_exec["status_counts"]}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
