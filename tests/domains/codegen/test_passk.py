"""pass@k tables (n differing per problem) and McNemar's test, against explicit formulas; the CLI."""

from __future__ import annotations

import csv
import json
from math import comb

import pytest
from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app
from adaptome.domains.codegen.passk import ResultsError, mcnemar, pass_at_k_rows, read_run


def _write_run(folder, outcomes: dict[str, list[bool]]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, oks in outcomes.items():
        results = [{"program": "", "stdout": "", "stderr": "", "exit_code": 0 if ok else 1,
                    "status": "OK" if ok else "Exception", "timestamp": 0} for ok in oks]
        (folder / f"{name}.results.json").write_text(json.dumps({"name": name, "results": results}))
    return folder


def _explicit(n, c, k):
    return 1 - comb(n - c, k) / comb(n, k)


def test_pass_at_k_with_different_n_per_problem(tmp_path):
    run = {"a": [True] * 3 + [False] * 9, "b": [False] * 20, "c": [True, False, True, False, True]}
    rows = pass_at_k_rows("ds", read_run(_write_run(tmp_path / "r", run)), (1, 10))
    by_k = {r["k"]: r for r in rows}
    assert by_k[1]["estimate"] == pytest.approx((_explicit(12, 3, 1) + 0 + _explicit(5, 3, 1)) / 3, abs=1e-6)
    # k = 10: problem c has n = 5 < 10 and is left out (no unbiased estimate), and the table says so
    assert by_k[10]["estimate"] == pytest.approx((_explicit(12, 3, 10) + 0) / 2, abs=1e-6)
    assert (by_k[10]["num_problems"], by_k[10]["skipped_problems"]) == (2, 1)
    assert (by_k[1]["min_completions"], by_k[1]["max_completions"]) == (5, 20)
    assert by_k[1]["majority_outcome"] == "fail" and by_k[1]["majority_rate"] == pytest.approx(31 / 37, abs=1e-6)


def test_mcnemar_exact_p_value_and_odds_ratio():
    # 10 problems: A alone solves 6, B alone solves 1, both 2, neither 1
    a = {f"p{i}": [i < 8] for i in range(10)}
    b = {f"p{i}": [i in (6, 7, 8)] for i in range(10)}
    res = mcnemar(a, b, "first")
    assert (res["only_a"], res["only_b"], res["both"], res["neither"]) == (6, 1, 2, 1)
    p_explicit = 2 * sum(comb(7, i) for i in range(0, 2)) / 2 ** 7  # two-sided exact binomial, b + c = 7
    assert res["p_value"] == pytest.approx(p_explicit)
    assert res["odds_ratio"] == 6.0 and res["chi2_cc"] == pytest.approx((5 - 1) ** 2 / 7)
    assert mcnemar(a, a)["p_value"] == 1.0
    # an odds ratio that is not finite is null (strict JSON), with a text saying why
    only_a = mcnemar(a, {p: [False] for p in a})
    assert only_a["odds_ratio"] is None and only_a["odds_ratio_text"].startswith("inf")
    assert mcnemar(a, a)["odds_ratio"] is None and mcnemar(a, a)["odds_ratio_text"].startswith("undefined")
    json.dumps(only_a, allow_nan=False)
    with pytest.raises(ResultsError, match="share no problem"):
        mcnemar({"x": [True]}, {"y": [True]})


def test_mcnemar_outcome_rules():
    a = {"p": [False, True, True]}
    b = {"p": [False, False, True]}
    assert mcnemar(a, b, "first")["only_a"] == 0
    assert mcnemar(a, b, "majority")["only_a"] == 1
    assert mcnemar(a, b, "any")["both"] == 1


def test_cli_writes_csv_markdown_and_mcnemar(tmp_path):
    ra = _write_run(tmp_path / "a", {"p1": [True] * 10, "p2": [False] * 10})
    rb = _write_run(tmp_path / "b", {"p1": [False] * 10, "p2": [False] * 10})
    out = tmp_path / "score"
    res = CliRunner().invoke(app, ["pass-at-k", "--run", f"he-r={ra}", "--run", f"other={rb}", "--out",
                                   str(out), "--compare", str(ra), "--compare", str(rb)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "pass_at_k.csv").open()))
    # k = 100 > n = 10: the row stays, without an estimate, every problem counted as skipped
    assert [(r["dataset"], r["k"], r["estimate"], r["skipped_problems"]) for r in rows] == [
        ("he-r", "1", "0.5", "0"), ("he-r", "10", "0.5", "0"), ("he-r", "100", "", "2"),
        ("other", "1", "0.0", "0"), ("other", "10", "0.0", "0"), ("other", "100", "", "2")]
    assert "| he-r | 1 | 50.0% |" in (out / "pass_at_k.md").read_text()
    assert "| he-r | 100 | n/a (n < k) | 0 | 2 |" in (out / "pass_at_k.md").read_text()
    assert json.loads((out / "mcnemar.json").read_text())["only_a"] == 1


def test_cli_bad_results_folder_is_one_line(tmp_path):
    (tmp_path / "x.results.json").write_text("{not json")
    res = CliRunner().invoke(app, ["pass-at-k", "--run", f"d={tmp_path}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "x.results.json: not a MultiPL-E results file" in res.output
    assert "Traceback" not in res.output


def test_cli_pass_at_k_matches_the_explicit_formula_at_the_edges(tmp_path):
    """c = 0, c = n, c = n - 1, and a k larger than every n (before: that k's row vanished silently)."""
    run = {"none": [False] * 4, "all": [True] * 4, "most": [True, True, True, False], "few": [False, True, False]}
    folder = _write_run(tmp_path / "r", run)
    res = CliRunner().invoke(app, ["pass-at-k", "--run", f"d={folder}", "--out", str(tmp_path / "o"),
                                   "--k", "1", "--k", "2", "--k", "4", "--k", "5", "--k", "1"])
    assert res.exit_code == 0, res.output
    ks = [int(r["k"]) for r in csv.DictReader((tmp_path / "o" / "pass_at_k.csv").open())]
    assert ks == [1, 2, 4, 5]  # a k given twice is one row
    rows = {int(r["k"]): r for r in csv.DictReader((tmp_path / "o" / "pass_at_k.csv").open())}
    for k in (1, 2):
        want = sum(_explicit(len(v), sum(v), k) for v in run.values()) / 4
        assert float(rows[k]["estimate"]) == pytest.approx(want, abs=1e-6)
    assert float(rows[1]["estimate"]) == pytest.approx((0 + 1 + 0.75 + 1 / 3) / 4, abs=1e-6)
    # k = 4: only the three problems with n = 4 count (0, 1, 1); "few" (n = 3) is skipped and said so
    assert float(rows[4]["estimate"]) == pytest.approx(2 / 3, abs=1e-6)
    assert (rows[4]["num_problems"], rows[4]["skipped_problems"]) == ("3", "1")
    assert (rows[5]["estimate"], rows[5]["num_problems"], rows[5]["skipped_problems"]) == ("", "0", "4")
    assert "| d | 5 | n/a (n < k) | 0 | 4 |" in res.output


def test_cli_k_below_one_is_one_line(tmp_path):
    folder = _write_run(tmp_path / "r", {"a": [True, False]})
    res = CliRunner().invoke(app, ["pass-at-k", "--run", f"d={folder}", "--out", str(tmp_path / "o"), "--k", "0"])
    assert res.exit_code == 2 and "k must be >= 1" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()
