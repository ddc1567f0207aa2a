"""Multi-process runs are real: ``torchrun --nproc_per_node 2`` on CPU joins one gloo group (no
``cpu=True`` needed), two processes equal one process with the same global batch, only the main
process writes, and a stalled peer fails the run naming its rank instead of hanging it."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from launch import TORCHRUN, free_port, launch_env
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaptome.core import cli

WORKER = Path(__file__).with_name("ddp_worker.py")






def _run_yaml(tmp_path: Path, name: str, batch_size: int) -> Path:
    rng = random.Random(0)
    text = tmp_path / "train.txt"
    if not text.exists():
        text.write_text("".join("".join(rng.choice("abcdefgh") for _ in range(40)) + "\n" for _ in range(64)))
    cfg = {"model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
           "data": {"train_files": [str(text)], "block_size": 32},
           "adapter": {"method": "lora_native",
                       "options": {"r": 4, "lora_dropout": 0.0, "init_lora_weights": "random_b"}},
           "train": {"output_dir": str(tmp_path / name), "max_steps": 4, "batch_size": batch_size, "lr": 0.01,
                     "progress": False, "log_every": 1, "save_every": 2}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(300)
def test_torchrun_cli_two_processes_equal_one_process(tmp_path):
    two = _run_yaml(tmp_path, "two", batch_size=2)
    r = subprocess.run([*TORCHRUN, "--master_port", free_port(), "-m", "adaptome.core.cli", "train", "--config",
                        str(two)], env=launch_env(), capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    one = _run_yaml(tmp_path, "one", batch_size=4)
    res = CliRunner().invoke(cli.app, ["train", "--config", str(one)])
    assert res.exit_code == 0, res.output

    out2, out1 = tmp_path / "two", tmp_path / "one"
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert json.loads((out1 / "summary.json").read_text())["world_size"] == 1
    # one metrics file, each step once, the global batch's loss: equal to the single process's
    lines2 = [json.loads(ln) for ln in (out2 / "metrics.jsonl").read_text().splitlines()]
    lines1 = [json.loads(ln) for ln in (out1 / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines2] == [1, 2, 3, 4]
    for a, b in zip(lines2, lines1):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w2 = load_file(str(out2 / "adapter" / "adapter_model.safetensors"))
    w1 = load_file(str(out1 / "adapter" / "adapter_model.safetensors"))
    assert w2.keys() == w1.keys() and w2
    for k in w2:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    assert summary["last_loss"] < summary["first_loss"]  # it trained
    # only the main process wrote: one set of outputs, no leftovers of a second writer
    assert sorted(p.name for p in out2.iterdir()) == ["adapter", "checkpoints", "config.yaml", "merged",
                                                       "metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in (out2 / "checkpoints").iterdir()) == ["step-2", "step-4"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_library_fit_under_torchrun_without_cpu_flag(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    r = subprocess.run([*TORCHRUN, "--master_port", free_port(), str(WORKER), str(two), "4"], env=launch_env(),
                       capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = subprocess.run([sys.executable, str(WORKER), str(one), "8"], env=launch_env(), capture_output=True, text=True,
                        timeout=280)
    assert r1.returncode == 0, r1.stderr[-3000:]
    w0, w1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    single = load_file(str(one / "rank0.safetensors"))
    assert (two / "world2").exists() and (one / "world1").exists()
    assert w0.keys() == w1.keys() == single.keys() and len(w0) > 0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ at {k}"
        torch.testing.assert_close(w0[k], single[k], rtol=1e-4, atol=1e-5)
    init = load_file(str(two / "init.safetensors"))
    assert max((w0[k] - init[k]).abs().max().item() for k in w0) > 1e-3, "the run did not train"


@pytest.mark.slow  # ~40 s: two torchrun start-ups and a timeout
@pytest.mark.timeout(200)
def test_stalled_peer_fails_the_run_naming_its_rank(tmp_path):
    """Rank 1 stops itself (SIGSTOP) after step 3; rank 0 fails within the 3 s collective timeout
    naming rank 1, and the checkpoint of step 2 stays intact."""
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.Popen([*TORCHRUN, "--master_port", free_port(), str(WORKER), str(out), "4", "stall"],
                            env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = out / "stalled.pid"

    def wake_later():  # torchrun's SIGTERM reaches a stopped process only once it continues
        deadline = time.time() + 120
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(12)  # well past the 3 s timeout: rank 0 has failed by now, or the test fails
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGCONT)
            except ProcessLookupError:
                pass

    t0 = time.time()
    waker = threading.Thread(target=wake_later, daemon=True)
    waker.start()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "no answer from rank 1 (last seen in step 3)" in err, err[-3000:]
    assert "train.dist_timeout_s=3" in err and "step-2" in err
    assert time.time() - t0 < 150
    state = json.loads((out / "run" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["step"] == 2
