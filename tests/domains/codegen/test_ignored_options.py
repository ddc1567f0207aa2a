"""Sampling and search options that a codegen run would not read are named, not dropped silently.

``generate --temperature 0 --top-p 0.5`` decoded greedily with no word about --top-p; ``plansearch --without-plan``
took a tree shape (``--num-observations``) it never builds, ``--num-layers 1`` a ``--num-second-observations``
and greedy steps a ``--top-p``: each is now refused naming the flag. ``--alg repeated`` warns about the idea
steps' options instead (the README runs both algorithms with one command line). Each failed before the fix.
"""

from __future__ import annotations

from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

PS = ["--problems", "humaneval-r", "--limit", "1", "--num-observations", "2", "--max-observation-k", "1",
      "--num-layers", "1", "--observation-tokens", "4", "--plan-tokens", "4", "--code-tokens", "4", "--no-execute"]


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_generate_refuses_top_p_with_greedy_decoding(tmp_path):
    res = _run("generate", "--problems", "humaneval-r", "--limit", 1, "--temperature", 0, "--top-p", 0.5,
               "--max-tokens", 2, "--out", tmp_path / "gen")
    assert res.exit_code == 2 and "--top-p 0.5: has no effect with --temperature 0" in res.output, res.output
    assert not (tmp_path / "gen").exists()
    res = _run("generate", "--problems", "humaneval-r", "--limit", 1, "--temperature", 0, "--max-tokens", 2,
               "--out", tmp_path / "greedy")
    assert res.exit_code == 0 and "has no effect" not in res.output, res.output
    # --top-p 1 (no nucleus) is what scripts pass for plain greedy decoding: not refused (review 3)
    res = _run("generate", "--problems", "humaneval-r", "--limit", 1, "--temperature", 0, "--top-p", 1,
               "--max-tokens", 2, "--out", tmp_path / "greedy1")
    assert res.exit_code == 0 and "has no effect" not in res.output, res.output


def test_plansearch_refuses_tree_options_without_a_plan(tmp_path):
    res = _run("plansearch", *PS, "--without-plan", "--out", tmp_path / "ps")
    assert res.exit_code == 2, res.output
    for flag in ("--num-observations", "--max-observation-k", "--num-layers", "--observation-tokens", "--plan-tokens"):
        assert f"{flag}: --without-plan samples the code straight from the prompt" in res.output, res.output
    assert not (tmp_path / "ps").exists()


def test_plansearch_refuses_second_observations_with_one_layer_and_top_p_when_greedy(tmp_path):
    res = _run("plansearch", *PS, "--num-second-observations", 5, "--out", tmp_path / "ps")
    assert res.exit_code == 2 and "--num-second-observations: num_layers 1 derives no second-order" in res.output
    res = _run("plansearch", *PS, "--idea-temperature", 0, "--code-temperature", 0, "--top-p", 0.5,
               "--out", tmp_path / "ps")
    assert res.exit_code == 2 and "--top-p: every step decodes greedily" in res.output, res.output


def test_repeated_sampling_warns_about_the_idea_options_and_plansearch_takes_them_silently(tmp_path):
    res = _run("plansearch", *PS, "--alg", "repeated", "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    assert "warning: has no effect: --observation-tokens: --alg repeated samples the code alone" in res.output
    assert "--plan-tokens: --alg repeated" in res.output and "--num-observations" not in res.output.split("warning")[1]
    res = _run("plansearch", *PS, "--out", tmp_path / "ps")
    assert res.exit_code == 0 and "has no effect" not in res.output, res.output
