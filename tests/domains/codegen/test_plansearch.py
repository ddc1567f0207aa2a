"""PLANSEARCH with the tiny model: the numbers of observation subsets, plans and codes follow the
parameters exactly; every step is logged; every code goes through the executor."""

from __future__ import annotations

import json
from collections import Counter
from math import comb

import pytest

from adaptome.domains.codegen.backends import LocalBackend
from adaptome.domains.codegen.execute import execute_run
from adaptome.domains.codegen.generate import read_completions
from adaptome.domains.codegen.plansearch import PlanSearchConfig, expected_counts, repeated_sampling, run_plansearch
from adaptome.domains.codegen.problems import load_problems

from .conftest import need, short_limits

SMALL = dict(observation_tokens=6, plan_tokens=6, code_tokens=12)


@pytest.fixture(scope="module")
def backend():
    return LocalBackend.load("tiny", seed=0)


def test_expected_counts_formula():
    cfg = PlanSearchConfig(num_observations=10, max_observation_k=2, num_layers=1)
    assert expected_counts(cfg)["nodes"] == 56  # 1 + 10 + 45, the reference's example
    cfg = PlanSearchConfig(num_observations=3, max_observation_k=2, num_layers=2, num_second_observations=2)
    first = 1 + 3 + 3
    assert expected_counts(cfg) == {"nodes": first + first * (2 + 1), "first_layer_nodes": first,
                                    "plans": 2 * 28, "codes": 2 * 28}
    assert expected_counts(PlanSearchConfig(num_observations=4, max_observation_k=1, num_layers=1,
                                            without_fix=True))["codes"] == 5


def test_plansearch_counts_log_and_execution(backend, tmp_path):
    need("Rscript")
    cfg = PlanSearchConfig(num_observations=2, max_observation_k=1, num_layers=2, num_second_observations=2, seed=1,
                           **SMALL)
    probs = load_problems("humaneval-r")[:1]
    summary = run_plansearch(probs, backend, cfg, tmp_path, progress=False)
    first = comb(2, 0) + comb(2, 1)  # 3 first-layer nodes
    nodes = first + first * comb(2, 1)  # + 3 * 2 second-layer nodes = 9
    assert summary["codes"][probs[0].name] == 2 * nodes == 18  # original + fixed plan per node
    log = [json.loads(line) for line in (tmp_path / "plansearch_log.jsonl").read_text().splitlines()]
    steps = Counter(r["step"] for r in log)
    assert steps == {"observation": 2, "second_observation": first * 2, "plan": nodes, "critique": nodes,
                     "fix": nodes, "pseudocode": 2 * nodes, "code": 2 * nodes}
    # the codes written are exactly the logged code steps (shuffled), and each is executed
    comps = read_completions(tmp_path)
    assert sorted(comps[probs[0].name]) == sorted(r["output"] for r in log if r["step"] == "code")
    res = execute_run(probs, comps, tmp_path / "results", workers=2, limits=short_limits(), progress=False)
    assert res["programs"] == 18
    doc = json.loads((tmp_path / "results" / f"{probs[0].name}.results.json").read_text())
    assert [r["program"] for r in doc["results"]] == [probs[0].program(c) for c in comps[probs[0].name]]


def test_ablations_and_num_completions(backend, tmp_path):
    probs = load_problems("humaneval-rkt")[:1]
    cfg = PlanSearchConfig(num_observations=2, max_observation_k=1, num_layers=1, without_fix=True,
                           without_pseudocode=True, num_completions=2, **SMALL)
    run_plansearch(probs, backend, cfg, tmp_path, progress=False)
    steps = Counter(json.loads(x)["step"] for x in (tmp_path / "plansearch_log.jsonl").read_text().splitlines())
    assert steps == {"observation": 2, "plan": 3, "code": 3}
    assert len(read_completions(tmp_path)[probs[0].name]) == 2  # num_completions keeps the first 2 after shuffling


def test_repeated_sampling_baseline(backend, tmp_path):
    probs = load_problems("humaneval-rkt")[:2]
    repeated_sampling(probs, backend, 5, tmp_path, max_tokens=8)
    assert [len(v) for v in read_completions(tmp_path).values()] == [5, 5]


def test_repeated_into_a_plansearch_folder_samples_its_own_codes(tmp_path):
    """``--alg repeated`` into a folder holding a PLANSEARCH run resumed PLANSEARCH's codes as its own
    (0 batches run) and scored them as the baseline; ``generate`` did the same. Through the real command."""
    from typer.testing import CliRunner

    from adaptome.domains.codegen.cli import app

    out = tmp_path / "ps"
    common = ["--problems", "humaneval-rkt", "--limit", "1", "--num-observations", "2", "--max-observation-k", "1",
              "--num-second-observations", "1", "--observation-tokens", "6", "--plan-tokens", "6", "--code-tokens",
              "12", "--out", str(out), "--no-execute"]
    res = CliRunner().invoke(app, ["plansearch", *common])
    assert res.exit_code == 0, res.output
    ps_codes = read_completions(out)
    res = CliRunner().invoke(app, ["generate", "--problems", "humaneval-rkt", "--limit", "1", "--max-tokens", "4",
                                   "--out", str(out)])
    assert res.exit_code == 2 and "not a generate run" in res.output, res.output
    assert read_completions(out) == ps_codes  # refused, nothing lost
    res = CliRunner().invoke(app, ["plansearch", "--alg", "repeated", *common])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["batches_run"] == 1 and summary["batches_reused"] == 0
    codes = read_completions(out)
    name = next(iter(ps_codes))
    assert len(codes[name]) == len(ps_codes[name]) and codes[name] != ps_codes[name]
    assert not (out / "plansearch_config.json").exists()  # the folder no longer claims to be a PLANSEARCH run


def test_a_second_run_leaves_no_scores_of_the_first(tmp_path):
    """A second ``plansearch`` into the same folder (``--no-execute``, or ``--alg repeated``) kept the first run's
    ``results/*.results.json`` and ``pass_at_k.*``, which graded codes no longer in ``completions.jsonl``.
    Through the real command; the user's own files in the folder stay."""
    from typer.testing import CliRunner

    from adaptome.domains.codegen.cli import app

    need("Rscript")
    out = tmp_path / "ps"
    common = ["--problems", "humaneval-r", "--limit", "1", "--num-observations", "1", "--max-observation-k", "1",
              "--num-layers", "1", "--without-fix", "--observation-tokens", "6", "--plan-tokens", "6",
              "--code-tokens", "12", "--timeout", "10", "--out", str(out)]
    res = CliRunner().invoke(app, ["plansearch", *common])
    assert res.exit_code == 0, res.output
    scores = sorted(p.relative_to(out) for p in [*out.glob("results/*.results.json"), *out.glob("pass_at_k.*")])
    assert len(scores) == 3, scores  # one problem's results, pass_at_k.csv and .md
    saved = {p: (out / p).read_bytes() for p in scores}
    (out / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["plansearch", *common, "--seed", "5", "--no-execute"])
    assert res.exit_code == 0, res.output
    assert not any((out / p).exists() for p in scores) and not (out / "results").exists()
    for p, data in saved.items():  # as the first run left them, with a file of the user's in results/
        (out / p).parent.mkdir(exist_ok=True)
        (out / p).write_bytes(data)
    (out / "results" / "README").write_text("mine")
    res = CliRunner().invoke(app, ["plansearch", *common, "--alg", "repeated", "--num-completions", "2",
                                   "--no-execute"])
    assert res.exit_code == 0, res.output
    assert not any((out / p).exists() for p in scores)
    assert (out / "notes.txt").read_text() == "mine" and (out / "results" / "README").read_text() == "mine"
