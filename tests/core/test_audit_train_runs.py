"""``adaptome train`` as a user runs it: what metrics record, resume from damaged checkpoints, data too short
for a block, and a LaMDA run under ``torchrun``.

Each test failed on the code before its fix: ``metrics.jsonl`` recorded as a step's ``lr`` the rate of the
step after it (the first warm-up rate never appeared, a cosine run's last step read 0); a LaMDA run under
``torchrun --nproc_per_node 2`` failed in DDP ("Expected to have finished reduction") once its step hook froze
every column of B; a ``trainer_state.json`` without its ``step`` was a ``KeyError`` traceback instead of a
named corrupt checkpoint; data shorter than one block was refused without naming the file or the option;
fp16 on the CPU trained in float32 without a word; an eval file repeating the training text was reported as
held out; ``train --help`` did not say how to launch it under torchrun.
"""

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import tiny_models
import torch
import yaml
from launch import TORCHRUN, free_port, launch_env
from safetensors.torch import load_file
from typer.testing import CliRunner

runner = CliRunner()
TINY = tiny_models.TINY_TRAIN_MODEL


def _text(path: Path, n: int = 48) -> Path:
    rng = random.Random(0)
    path.write_text("".join("".join(rng.choice("abcdefghij ") for _ in range(40)) + "\n" for _ in range(n)))
    return path


def _config(tmp_path: Path, name: str = "run", adapter=None, data=None, **train) -> Path:
    cfg = {"model": {"tiny": TINY},
           "data": {"train_files": [str(_text(tmp_path / "train.txt"))], "block_size": 32, **(data or {})},
           "adapter": adapter or {"method": "lora_native", "options": {"r": 2}},
           "train": {"output_dir": str(tmp_path / name), "max_steps": 4, "batch_size": 4, "lr": 0.01,
                     "progress": False, "log_every": 1, "threads": 1, **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_metrics_lr_is_the_rate_each_step_used(app, tmp_path):
    """Warm-up 3 of a constant schedule at lr 0.01: steps 1..4 train at 0.0025, 0.005, 0.0075, 0.01
    (``schedule.py``); before, each line showed the next step's rate (0.005 .. 0.01, 0.01)."""
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, warmup_steps=3, schedule="constant"))])
    assert res.exit_code == 0, res.output
    lrs = [r["lr"] for r in _metrics(tmp_path / "run") if "lr" in r]
    assert lrs == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    # a decay to 0: the last step still trained at a positive rate (before: logged as 0.0)
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, "cos", schedule="cosine"))])
    assert res.exit_code == 0, res.output
    lrs = [r["lr"] for r in _metrics(tmp_path / "cos") if "lr" in r]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01 * 0.5 * (1 + torch.cos(
        torch.tensor(torch.pi * 3 / 4)).item()))


def _as_stopped(run):
    """The folder as a run stopped after its checkpoints leaves it (no adapter/ or merged/ yet), so the same
    command resumes it (``--overwrite`` would start again)."""
    shutil.rmtree(run / "adapter")
    shutil.rmtree(run / "merged", ignore_errors=True)


def test_trainer_state_without_its_step_is_a_named_corrupt_checkpoint(app, tmp_path, caplog):
    """A trainer_state.json that is JSON but lost its data position: the newest checkpoint is named as corrupt
    and the previous one resumed (before: ``KeyError: 'step'`` from the loop)."""
    cfg = _config(tmp_path, save_every=2)
    assert runner.invoke(app, ["train", "-c", str(cfg)]).exit_code == 0
    state_file = tmp_path / "run" / "checkpoints" / "step-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["step"]
    state_file.write_text(json.dumps(state))
    _as_stopped(tmp_path / "run")
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.max_steps=6"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed_from"] == 2
    assert f"{state_file}: not a trainer state (step missing" in caplog.text
    # every checkpoint damaged so: one line naming the file, no traceback
    for p in (tmp_path / "run" / "checkpoints").iterdir():
        state = json.loads((p / "trainer_state.json").read_text())
        state["micro_batch"] = "7"
        (p / "trainer_state.json").write_text(json.dumps(state))
    _as_stopped(tmp_path / "run")
    res = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.max_steps=8"])
    assert res.exit_code == 2 and "not a trainer state" in res.output and "Traceback" not in res.output


def test_data_shorter_than_one_block_names_the_file_and_the_option(app, tmp_path):
    """An eval file of 12 tokens with blocks of 32: before, 'the data holds 12 tokens, ...' named neither the
    file (train or eval?) nor data.block_size."""
    short = tmp_path / "short.txt"
    short.write_text("the cat sat\n")
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, data={"eval_files": [str(short)]}))])
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[-1]
    assert str(short) in line and "fewer than one block of 32" in line and "data.block_size" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_eval_file_that_repeats_the_training_text_is_not_reported_as_held_out(app, tmp_path, caplog):
    """data.eval_files naming the training file: before, summary.json gave its perplexity as the held-out
    one without a word; now a warning names the file and the summary records the overlap (0 for other text)."""
    train = _text(tmp_path / "train.txt")
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, max_steps=1, data={"eval_files": [str(train)]}))])
    assert res.exit_code == 0, res.output
    assert f"{train}: 100% of the eval examples are also in data.train_files" in caplog.text
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_overlap_with_train"] == 1.0
    other = tmp_path / "other.txt"
    other.write_text("".join(f"line {i} of another text, held out from training\n" for i in range(12)))
    caplog.clear()
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, "held", max_steps=1,
                                                         data={"eval_files": [str(other)]}))])
    assert res.exit_code == 0, res.output
    assert "eval examples are also in" not in caplog.text
    assert json.loads((tmp_path / "held" / "summary.json").read_text())["eval_overlap_with_train"] == 0.0


def test_fp16_on_the_cpu_says_it_computes_in_float32(app, tmp_path, caplog):
    """accelerate autocasts nothing for fp16 on the CPU: before, the run said nothing and trained in float32
    while its config.yaml read fp16."""
    res = runner.invoke(app, ["train", "-c", str(_config(tmp_path, max_steps=1, mixed_precision="fp16"))])
    assert res.exit_code == 0, res.output
    assert "fp16: accelerate has no fp16 autocast on the CPU" in caplog.text and "use bf16" in caplog.text


def test_train_help_says_how_to_launch_it_under_torchrun(app):
    """The README shows torchrun only for a user's own script, and ``python -m adaptome`` does not exist:
    ``adaptome train --help`` now gives the command line (the one the distributed tests use)."""
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "torchrun --nproc_per_node 2 -m adaptome.core.cli train --config" in " ".join(res.output.split())


@pytest.mark.slow  # ~30 s: a torchrun start-up and a second run
@pytest.mark.timeout(300)
def test_lamda_under_torchrun_equals_one_process(app, tmp_path):
    """LaMDA freezes every column of B after freeze_fraction of the steps (B stops requiring gradients):
    under DDP the next step failed; now 2 processes x batch 2 end with the weights of 1 process x batch 4."""
    lamda = {"method": "lamda", "options": {"r": 4, "freeze_fraction": 0.3}}
    two = _config(tmp_path, "two", adapter=lamda, max_steps=6, batch_size=2, save_every=3)
    r = subprocess.run([*TORCHRUN, "--master_port", free_port(), "-m", "adaptome.core.cli", "train", "-c", str(two)],
                       env=launch_env(), capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    one = _config(tmp_path, "one", adapter=lamda, max_steps=6, batch_size=4, save_every=3)
    assert runner.invoke(app, ["train", "-c", str(one)]).exit_code == 0
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    w2 = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    assert w2.keys() == w1.keys() and any("lamda_B" in k for k in w2)
    for k in w2:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
