"""``adaptome train`` as a user runs it (audit round 3): evaluation under ``torchrun``, ``--overwrite`` over
checkpoints of another configuration, and the summary's losses without metrics lines.

Each test failed on the code before its fix: under ``torchrun --nproc_per_node 2`` every process ran the whole
evaluation (twice the forward passes of one process); ``--overwrite`` refused a folder holding checkpoints of
another configuration, telling the user to remove them by hand; ``summary.json``'s ``first_loss`` /
``last_loss`` were null with ``train.log_every 0``.
"""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models
import yaml
from launch import TORCHRUN, free_port, launch_env
from typer.testing import CliRunner

runner = CliRunner()
TINY = tiny_models.TINY_TRAIN_MODEL


def _text(path: Path, n: int = 48, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("".join("".join(rng.choice("abcdefghij ") for _ in range(40)) + "\n" for _ in range(n)))
    return path


def _config(tmp_path: Path, name: str = "run", model=None, data=None, **train) -> Path:
    cfg = {"model": {"tiny": TINY, **(model or {})},
           "data": {"train_files": [str(_text(tmp_path / "train.txt"))], "block_size": 32, **(data or {})},
           "adapter": {"method": "lora_native", "options": {"r": 2, "init_lora_weights": "random_b"}},
           "train": {"output_dir": str(tmp_path / name), "max_steps": 4, "batch_size": 4, "lr": 0.01,
                     "progress": False, "log_every": 1, "threads": 1, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


#: run under torchrun instead of ``-m adaptome.core.cli``: counts, per process, the examples every evaluation
#: forward pass (the model's top-level call without gradients) saw, written to COUNT_DIR/rank-<RANK> at exit
_COUNTING_CLI = """
import atexit, os, sys
import torch
from torch import nn

seen = [0]
def count(module, args, kwargs):
    if not torch.is_grad_enabled() and type(module).__name__.endswith("LM") and "input_ids" in kwargs:
        seen[0] += int(kwargs["input_ids"].shape[0])
_call = nn.Module.__call__
def _counted(self, *args, **kwargs):
    count(self, args, kwargs)
    return _call(self, *args, **kwargs)
nn.Module.__call__ = _counted
atexit.register(lambda: open(os.path.join(os.environ["COUNT_DIR"], "rank-" + os.environ.get("RANK", "0")),
                             "w").write(str(seen[0])))
from adaptome.core import cli
sys.argv = ["adaptome", *sys.argv[1:]]
cli.main()
"""


def _counted_run(tmp_path: Path, cfg: Path, name: str, processes: int) -> dict[str, int]:
    script = tmp_path / "counting_cli.py"
    script.write_text(_COUNTING_CLI)
    counts = tmp_path / f"counts-{name}"
    counts.mkdir()
    env = {**launch_env(), "COUNT_DIR": str(counts)}
    launcher = [*TORCHRUN, "--master_port", free_port()] if processes == 2 else [sys.executable]
    r = subprocess.run([*launcher, str(script), "train", "-c", str(cfg)], env=env, capture_output=True, text=True,
                       timeout=280, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return {p.name: int(p.read_text()) for p in counts.iterdir()}


@pytest.mark.slow  # ~40 s: two torchrun start-ups and two single-process runs
@pytest.mark.timeout(600)
def test_evaluation_under_torchrun_is_shared_by_the_processes_and_equals_one_process(tmp_path):
    """2 processes x batch 2 against 1 x batch 4, evaluating every 2 steps on 20 held-out lines: the perplexities
    (base, unigram, each evaluation) are one process's to float tolerance, and the processes together forward
    the eval set as often as one process does (before: each forwarded all of it, twice the work). A masked LM
    scores the same masked tokens either way (its eval masks do not depend on the number of processes)."""
    evals = str(_text(tmp_path / "eval.txt", n=20, seed=1))
    for kind in ("causal", "masked"):
        common = dict(model={"kind": kind}, data={"eval_files": [evals]}, eval_every=2)
        two = _config(tmp_path, f"two-{kind}", batch_size=2, **common)
        one = _config(tmp_path, f"one-{kind}", batch_size=4, **common)
        counts_two, counts_one = _counted_run(tmp_path, two, f"two-{kind}", 2), \
            _counted_run(tmp_path, one, f"one-{kind}", 1)
        assert sorted(counts_two) == ["rank-0", "rank-1"] and counts_one["rank-0"] > 0
        assert sum(counts_two.values()) == counts_one["rank-0"], (kind, counts_two, counts_one)
        s2 = json.loads((tmp_path / f"two-{kind}" / "summary.json").read_text())
        s1 = json.loads((tmp_path / f"one-{kind}" / "summary.json").read_text())
        assert s2["world_size"] == 2 and s1["world_size"] == 1
        keys = ["eval/perplexity_base", "eval/perplexity_unigram"]
        if kind == "causal":  # (masked-LM training masks are drawn per process: the trained models differ)
            keys.append("eval/perplexity")
            e2 = [r["eval/perplexity"] for r in _metrics(tmp_path / f"two-{kind}") if "eval/perplexity" in r]
            e1 = [r["eval/perplexity"] for r in _metrics(tmp_path / f"one-{kind}") if "eval/perplexity" in r]
            assert len(e2) == len(e1) == 2 and e2 == pytest.approx(e1, rel=1e-5)
        for k in keys:
            assert s2[k] == pytest.approx(s1[k], rel=1e-5), (kind, k)


def test_overwrite_starts_again_whatever_configuration_wrote_the_checkpoints(app, tmp_path):
    """A folder holding a finished run at lr 0.01: the same run at lr 0.02 is refused (nothing removed); with
    --overwrite but refused for another reason first (a block size past the model's positions) nothing is
    removed either; with --overwrite the old checkpoints and metrics go and the run starts at step 0 (before:
    refused, 'remove the checkpoints to start over'), and so it does for checkpoints of its own configuration."""
    cfg = _config(tmp_path, save_every=2)
    assert runner.invoke(app, ["train", "-c", str(cfg)]).exit_code == 0
    out = tmp_path / "run"
    old_state = (out / "checkpoints" / "step-4" / "trainer_state.json").read_text()
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.lr=0.02"])
    assert res.exit_code != 0 and "adapter: already exists" in res.output
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.lr=0.02", "--set", "data.block_size=100000",
                              "--overwrite"])
    assert res.exit_code != 0 and "data.block_size" in res.output
    assert (out / "checkpoints" / "step-4" / "trainer_state.json").read_text() == old_state
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.lr=0.02", "--overwrite"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    state = json.loads((out / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert state["identity"]["train.lr"] == 0.02
    assert [r["step"] for r in _metrics(out) if "loss" in r] == [1, 2, 3, 4]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 0.02
    # the same configuration again with --overwrite starts again too: resuming the finished run would take no
    # step and save its old weights again (also after an update of the code that trained them)
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.lr=0.02", "--overwrite"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == 4
    assert [r["step"] for r in _metrics(out) if "loss" in r] == [1, 2, 3, 4]


def test_first_and_last_loss_are_recorded_without_metrics_lines(app, tmp_path):
    """``train.log_every 0`` writes no metrics lines; summary.json still gives the first step's and the last
    step's loss (before: null), the same as a run logging every step; also after a resume."""
    logged = runner.invoke(app, ["train", "-c", str(_config(tmp_path, "logged", schedule="constant"))])
    assert logged.exit_code == 0, logged.output
    losses = [r["loss"] for r in _metrics(tmp_path / "logged") if "loss" in r]
    cfg = _config(tmp_path, "quiet", log_every=0, save_every=2, schedule="constant")
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.max_steps=2"])
    assert res.exit_code == 0, res.output
    shutil.rmtree(tmp_path / "quiet" / "adapter")  # as a run stopped after its step-2 checkpoint leaves it
    shutil.rmtree(tmp_path / "quiet" / "merged", ignore_errors=True)
    res = runner.invoke(app, ["train", "-c", str(cfg)])  # resumes at step 2, trains to 4
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "quiet" / "summary.json").read_text())
    assert summary["resumed_from"] == 2
    assert summary["first_loss"] == pytest.approx(losses[0], rel=1e-6)
    assert summary["last_loss"] == pytest.approx(losses[-1], rel=1e-6)
    assert not (tmp_path / "quiet" / "metrics.jsonl").exists() or "loss" not in (
        tmp_path / "quiet" / "metrics.jsonl").read_text()


#: ``adaptome train`` under torchrun where rank 1 alone fails as it starts (a file only it cannot read, say)
_RANK1_FAILS_CLI = """
import os, sys
from adaptome.core import generic_train
from adaptome.core.errors import AdaptomeError

real = generic_train.run_generic
def failing_on_rank1(*args, **kwargs):
    if os.environ["RANK"] == "1":
        raise AdaptomeError("only this process hit this")
    return real(*args, **kwargs)
generic_train.run_generic = failing_on_rank1
from adaptome.core import cli
sys.argv = ["adaptome", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.slow  # ~30-80 s: two torchrun start-ups, the second waits for rank 0's message
@pytest.mark.timeout(300)
def test_under_torchrun_an_error_every_process_hits_is_one_line(tmp_path):
    """An unknown key under ``torchrun --nproc_per_node 2``: one ``error:`` line (before: one per process); an
    error rank 1 alone hits is still printed, naming the rank."""
    cfg = _config(tmp_path)
    r = subprocess.run([*TORCHRUN, "--master_port", free_port(), "-m", "adaptome.core.cli", "train", "-c", str(cfg),
                        "--set", "train.lrr=3"], env=launch_env(), capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and len(lines) == 1 and "unknown key 'train.lrr'" in lines[0], r.stderr[-3000:]
    script = tmp_path / "rank1_fails.py"
    script.write_text(_RANK1_FAILS_CLI)
    r = subprocess.run([*TORCHRUN, "--master_port", free_port(), str(script), "train", "-c", str(cfg)],
                       env=launch_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and lines == ["error: rank 1: only this process hit this"], r.stderr[-3000:]


def test_masked_lm_examples_cut_to_the_block_are_counted(app, tmp_path, caplog):
    """A masked LM trains and scores each example's first ``data.block_size`` tokens: 40-character lines at block
    32 lose a fifth of their tokens. Before, nothing said so; now a warning names the file, the count and the
    share (none when the block holds every example)."""
    evals = str(_text(tmp_path / "eval.txt", n=8, seed=1))
    cfg = _config(tmp_path, model={"kind": "masked"}, data={"eval_files": [evals]}, max_steps=2)
    res = runner.invoke(app, ["train", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 'train.txt'}: 48 of 48 examples are longer than data.block_size (32 tokens)" in caplog.text
    assert f"{evals}: 8 of 8 examples are longer" in caplog.text and "20% of the tokens left out" in caplog.text
    caplog.clear()
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "data.block_size=64", "--set",
                              f"train.output_dir={tmp_path / 'long'}"])
    assert res.exit_code == 0, res.output
    assert "longer than data.block_size" not in caplog.text


def test_a_bad_set_override_is_named_as_such_not_as_the_file(app, tmp_path):
    """An unknown key or a bad value given with --set: the error names the --set item (before: the config file
    alone, where the user looks for the key in vain); an error of the file itself still names the file alone."""
    cfg = _config(tmp_path)
    for override, named in (("train.lrr=3", "unknown key 'train.lrr'"),
                             ("model.tiny.hidden=3", "unknown key 'model.tiny.hidden'"),
                             ("train.max_steps=abc", "train.max_steps: expected an integer, got 'abc'")):
        res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.lr=0.02", "--set", override])
        assert res.exit_code == 2, res.output
        assert " ".join(res.output.split()).startswith(f"error: --set {override} (over {cfg}): {named}"), res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("lr: 0.01", "lrr: 0.01"))
    res = runner.invoke(app, ["train", "-c", str(bad), "--set", "train.max_steps=3"])
    assert res.exit_code == 2 and res.output.startswith(f"error: {bad}: unknown key 'train.lrr'"), res.output
    assert not (tmp_path / "run").exists()


def test_overwrite_with_resume_false_starts_again(app, tmp_path):
    """Review 2, finding 4: --overwrite beside train.resume=false was refused with 'resume=True continues it'
    (the resume=False refusal came first); --overwrite asks to start again, which needs no resume."""
    cfg = _config(tmp_path, save_every=2, resume=False)
    assert runner.invoke(app, ["train", "-c", str(cfg)]).exit_code == 0
    res = runner.invoke(app, ["train", "-c", str(cfg), "--overwrite"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == 4
