"""PLANSEARCH (Wang et al. 2024, "Planning In Natural Language Improves LLM Search For Code
Generation", arXiv 2409.03733; scaleapi/plansearch) for R and Racket problems.

Per problem:

1. **First-order observations**: ``num_observations`` samples of one non-obvious observation
   each (idea temperature), ids ``o1 .. oN``.
2. **Subsets** of the observations of size 0..``max_observation_k`` (S), shuffled with the seed:
   sum_{s=0..S} C(N, s) first-layer nodes.
3. **Second-order observations** (``num_layers == 2``): for each first-layer node T,
   ``num_second_observations`` (M) new observations derived from T; second-layer nodes are
   T + U for every subset U of them with 1 <= |U| <= S, i.e. sum_{s=1..S} C(M, s) per T. Nodes are
   told apart by observation *identity* (id sets), never by text, so the counts are exact:
   ``expected_counts(cfg)``.
4. **Plans**: one natural-language plan per node; a **critique** of it and a **fixed** plan; both
   the original and the fixed plan are kept (``without_fix`` keeps the original only).
5. **Code**: plan -> pseudocode (skipped with ``without_pseudocode``) -> a completion of the
   problem's own prompt, cut at its stop tokens, with the plan and pseudocode as comments before
   the prompt (``without_plan``: no plan, pseudocode or observations at all; the code is sampled
   from the bare prompt, the "repeated sampling" ablation).
6. All codes are shuffled with the seed; ``num_completions = -1`` keeps all, else the first k (at most all:
   ``kept_codes``; 0 or below -1 is refused).

Every step is one line of ``plansearch_log.jsonl`` (problem, step, node, seed, prompt, output);
the codes are written as a completions file that ``execute_run`` grades like any other, and
**repeated sampling** (``repeated_sampling``) draws as many codes as the search keeps (``kept_codes``)
from the bare prompt, as the baseline.

Not covered: the reference's list / filter / "format as a Python list" conversation for parsing a
multi-observation answer (each observation here is its own sample), public-test filtering of codes,
chat-model prompting (the prompts are plain completion prompts, as base and tiny models need).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptome.domains.codegen.backends import Backend
from adaptome.domains.codegen.generate import derive_seed, prompt_digest
from adaptome.domains.codegen.languages import get_language
from adaptome.domains.codegen.problems import Problem
from adaptome.domains.codegen.prompts import split_lang_line


@dataclass
class PlanSearchConfig:
    """Parameters of the search.

    Args:
        num_observations: first-order observations per problem (N).
        max_observation_k: largest subset of observations combined into one node (S).
        num_layers: 1 (first-order nodes only) or 2 (plus second-order observations).
        num_second_observations: new observations derived per first-layer node (M).
        without_fix: keep only the original plan (no critique and fix).
        without_pseudocode: go from plan straight to code.
        without_plan: no observations / plans at all (pure repeated sampling through this path).
        num_completions: codes kept per problem after shuffling; -1 keeps all.
        idea_temperature: temperature of observations, plans, critiques, fixes, pseudocode.
        code_temperature: temperature of the final code.
        top_p: nucleus mass for every step.
        observation_tokens: max new tokens of one observation.
        plan_tokens: max new tokens of a plan, critique, fix or pseudocode.
        code_tokens: max new tokens of the code.
        seed: base seed; each step derives its own from it, the problem and the node.
    """

    num_observations: int = 10
    max_observation_k: int = 2
    num_layers: int = 2
    num_second_observations: int = 3
    without_fix: bool = False
    without_pseudocode: bool = False
    without_plan: bool = False
    num_completions: int = -1
    idea_temperature: float = 0.9
    code_temperature: float = 0.9
    top_p: float = 0.95
    observation_tokens: int = 64
    plan_tokens: int = 256
    code_tokens: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_layers not in (1, 2):
            raise ValueError(f"num_layers must be 1 or 2, got {self.num_layers}")
        if self.num_observations < 1 or self.max_observation_k < 0 or self.num_second_observations < 1:
            raise ValueError("num_observations and num_second_observations must be >= 1, max_observation_k >= 0")
        if self.num_completions == 0 or self.num_completions < -1:  # -5 would keep all, 0 none
            raise ValueError(f"--num-completions {self.num_completions}: give -1 (keep all codes) or a count >= 1")


#: options only the search's idea steps (observations, plans, critiques, pseudocode) read
_IDEA_OPTIONS = ("idea_temperature", "observation_tokens", "plan_tokens", "without_pseudocode")
#: options that shape the search tree (and so the number of codes)
_TREE_OPTIONS = ("num_observations", "max_observation_k", "num_layers", "num_second_observations", "without_fix")


def ignored_options(cfg: PlanSearchConfig, alg: str = "plansearch") -> list[str]:
    """The options of ``cfg`` set away from their defaults that the run would not read, each with the reason:
    with ``alg`` ``repeated`` the idea steps' (only the tree's shape counts, for the number of codes); with
    ``without_plan`` the idea steps' and the tree's (one code per problem, straight from the prompt); with
    ``num_layers`` 1 ``num_second_observations``; ``top_p`` when every step decodes greedily (temperature 0)."""
    default, out = PlanSearchConfig(), []

    def given(names):
        return [n for n in names if getattr(cfg, n) != getattr(default, n)]

    if alg == "repeated":
        out += [f"{n}: --alg repeated samples the code alone (no observations, plans or pseudocode)"
                for n in given(_IDEA_OPTIONS)]
    elif cfg.without_plan:
        out += [f"{n}: --without-plan samples the code straight from the prompt (no observations or plans)"
                for n in given(_IDEA_OPTIONS + _TREE_OPTIONS)]
    elif cfg.num_layers == 1:
        out += [f"{n}: num_layers 1 derives no second-order observations" for n in given(["num_second_observations"])]
    ideas = alg != "repeated" and not cfg.without_plan
    if cfg.top_p not in (default.top_p, 1.0) and cfg.code_temperature == 0 and (not ideas or cfg.idea_temperature == 0):
        out.append("top_p: every step decodes greedily (temperature 0), which samples nothing")
    return out


def kept_codes(cfg: PlanSearchConfig) -> int:
    """Codes per problem the search keeps: all of ``expected_counts``, or ``num_completions`` of them (at most
    all); the number the repeated-sampling baseline draws."""
    codes = expected_counts(cfg)["codes"]
    return codes if cfg.num_completions < 0 else min(cfg.num_completions, codes)


def expected_counts(cfg: PlanSearchConfig) -> dict[str, int]:
    """Nodes, plans and codes per problem that ``cfg`` produces (before ``num_completions``)."""
    if cfg.without_plan:
        return {"nodes": 0, "plans": 0, "codes": 1}
    first = sum(math.comb(cfg.num_observations, s) for s in range(cfg.max_observation_k + 1))
    second = first * sum(math.comb(cfg.num_second_observations, s) for s in range(1, cfg.max_observation_k + 1)) \
        if cfg.num_layers == 2 else 0
    nodes = first + second
    plans = nodes * (1 if cfg.without_fix else 2)
    return {"nodes": nodes, "first_layer_nodes": first, "plans": plans, "codes": plans}


class _Logger:
    def __init__(self, path: Path):
        self.f = path.open("a", encoding="utf-8")

    def __call__(self, **row) -> None:
        self.f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self.f.close()


def _problem_text(problem: Problem) -> str:
    lang = get_language(problem.language)
    _, body = split_lang_line(problem.prompt)
    return f"Language: {lang.display}\n{body}"


def _obs_block(obs: dict[str, str], ids: tuple[str, ...]) -> str:
    return "\n".join(f"- {obs[i]}" for i in ids) if ids else "(none)"


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line or "(empty)"


def search_problem(problem: Problem, backend: Backend, cfg: PlanSearchConfig, log: _Logger) -> list[str]:
    """The codes (completions of ``problem.prompt``) PLANSEARCH produces for one problem."""
    lang = get_language(problem.language)
    step_no = itertools.count()

    def ask(step: str, node: str, prompt: str, n: int, temp: float, tokens: int, stop: list[str]) -> list[str]:
        seed = derive_seed(cfg.seed, f"{problem.name}/{step}/{node}", next(step_no))
        outs = backend.complete(prompt, n, seed, temp, cfg.top_p, tokens, stop)
        for o in outs:
            log(problem=problem.name, step=step, node=node, seed=seed, prompt=prompt, output=o)
        return outs

    def code_for(context: str, node: str) -> str:
        head, body = split_lang_line(problem.prompt)  # the #lang line stays first, before the plan comments
        commented = "\n".join(f"{lang.comment} {ln}".rstrip() for ln in context.splitlines())
        prompt = head + (commented + "\n" if context else "") + body
        return ask("code", node, prompt, 1, cfg.code_temperature, cfg.code_tokens, list(problem.stop_tokens))[0]

    if cfg.without_plan:
        return [code_for("", "bare")]
    text = _problem_text(problem)
    outs = ask("observation", "root", f"{text}\n\nOne non-obvious observation about this problem (no code):\n-",
               cfg.num_observations, cfg.idea_temperature, cfg.observation_tokens, ["\n"])
    obs = {f"o{i + 1}": _first_line(o) for i, o in enumerate(outs)}
    first = [tuple(c) for s in range(cfg.max_observation_k + 1) for c in itertools.combinations(list(obs), s)]
    random.Random(derive_seed(cfg.seed, problem.name, -1)).shuffle(first)
    nodes: list[tuple[str, ...]] = list(first)
    if cfg.num_layers == 2:
        for t in first:
            tag = "+".join(t) or "empty"
            outs = ask("second_observation", tag,
                       f"{text}\n\nObservations:\n{_obs_block(obs, t)}\n\nA new observation that follows from "
                       "these (quote the ones it uses):\n-", cfg.num_second_observations, cfg.idea_temperature,
                       cfg.observation_tokens, ["\n"])
            new_ids = [f"{tag}/s{j + 1}" for j in range(len(outs))]
            obs.update({i: _first_line(o) for i, o in zip(new_ids, outs)})
            for s in range(1, cfg.max_observation_k + 1):
                nodes.extend(t + tuple(u) for u in itertools.combinations(new_ids, s))
    codes = []
    for node in nodes:
        tag = "+".join(node) or "empty"
        plan_prompt = f"{text}\n\nObservations:\n{_obs_block(obs, node)}\n\nPlan of the solution in plain words:\n"
        plan = ask("plan", tag, plan_prompt, 1, cfg.idea_temperature, cfg.plan_tokens, ["\n\n"])[0]
        plans = [("plan", plan)]
        if not cfg.without_fix:
            critique = ask("critique", tag, f"{plan_prompt}{plan}\n\nWhat is wrong with this plan?\n", 1,
                           cfg.idea_temperature, cfg.plan_tokens, ["\n\n"])[0]
            fixed = ask("fix", tag, f"{plan_prompt}{plan}\n\nCritique:\n{critique}\n\nCorrected plan:\n", 1,
                        cfg.idea_temperature, cfg.plan_tokens, ["\n\n"])[0]
            plans.append(("fixed_plan", fixed))
        for kind, p in plans:
            context = f"Plan: {p}"
            if not cfg.without_pseudocode:
                pseudo = ask("pseudocode", f"{tag}/{kind}", f"{text}\n\nPlan:\n{p}\n\nPseudocode:\n", 1,
                             cfg.idea_temperature, cfg.plan_tokens, ["\n\n"])[0]
                context += f"\nPseudocode:\n{pseudo}"
            codes.append(code_for(context, f"{tag}/{kind}"))
    random.Random(derive_seed(cfg.seed, problem.name, -2)).shuffle(codes)
    return codes if cfg.num_completions < 0 else codes[: cfg.num_completions]


def _remove_earlier_scores(out: Path) -> None:
    """An earlier run's ``results/*.results.json`` and ``pass_at_k.csv`` / ``.md`` in ``out`` (what ``codegen
    plansearch`` writes there, nothing else): they grade the earlier codes, not the new ones."""
    for name in ("pass_at_k.csv", "pass_at_k.md"):
        (out / name).unlink(missing_ok=True)
    results = out / "results"
    if results.is_dir():
        for f in results.glob("*.results.json"):
            f.unlink()
        with contextlib.suppress(OSError):
            results.rmdir()  # only when nothing else is left in it


def run_plansearch(problems: list[Problem], backend: Backend, cfg: PlanSearchConfig, out_dir: str | os.PathLike,
                   progress: bool = True) -> dict:
    """Search every problem; writes ``plansearch_config.json``, ``plansearch_log.jsonl``, ``completions.jsonl``
    (an earlier run's completions, results and pass@k tables in ``out_dir`` are removed first)."""
    from adaptome.core.atomic import write_text_atomic
    from adaptome.core.progress import progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier_scores(out)
    (out / "generate_config.json").unlink(missing_ok=True)  # a repeated-sampling run's, if any: not this one's
    # an earlier run's codes: a search stopped before writing its own would leave them beside this config, and
    # `codegen execute --completions` would grade them as this run's
    (out / "completions.jsonl").unlink(missing_ok=True)
    write_text_atomic(out / "plansearch_config.json", json.dumps(asdict(cfg), indent=1))
    (out / "plansearch_log.jsonl").unlink(missing_ok=True)
    log = _Logger(out / "plansearch_log.jsonl")
    rows = []
    try:
        with progress_bar("plansearch", total=len(problems), enabled=progress) as bar:
            for p in problems:
                rows.append({"name": p.name, "batch_start": 0, "prompt_digest": prompt_digest(p),
                             "completions": search_problem(p, backend, cfg, log)})
                bar.advance(1)
    finally:
        log.close()
    write_text_atomic(out / "completions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return {"problems": len(problems), "codes": {r["name"]: len(r["completions"]) for r in rows},
            "expected": expected_counts(cfg)}


def repeated_sampling(problems: list[Problem], backend: Backend, n: int, out_dir: str | os.PathLike,
                      temperature: float = 0.9, top_p: float = 0.95, max_tokens: int = 512, seed: int = 0) -> dict:
    """The baseline: ``n`` codes per problem sampled from the bare prompt (zero-shot), written the same way
    (an earlier run's results and pass@k tables in ``out_dir`` are removed first)."""
    from adaptome.domains.codegen.generate import GenerateConfig, run_generate

    cfg = GenerateConfig(model=getattr(backend, "name", "backend"), n=n, batch_size=n, temperature=temperature,
                         top_p=top_p, max_tokens=max_tokens, seed=seed)
    for stale in ("plansearch_config.json", "plansearch_log.jsonl"):  # a PLANSEARCH run's, if any
        (Path(out_dir) / stale).unlink(missing_ok=True)
    _remove_earlier_scores(Path(out_dir))
    return run_generate(problems, backend, cfg, out_dir, overwrite=True, progress=False)
