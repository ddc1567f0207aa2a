"""Two processes (torchrun, gloo, CPU) end with identical weights, equal to one process with the
same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.timeout(300)  # pytest-timeout (dev extra)
def test_two_processes_match_one_process_with_same_global_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(WORKER), str(two), "4"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = subprocess.run([sys.executable, str(WORKER), str(one), "8"], env=_env(), capture_output=True, text=True,
                        timeout=280)
    assert r1.returncode == 0, r1.stderr[-3000:]

    w0, w1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    single = load_file(str(one / "rank0.safetensors"))
    assert w0.keys() == w1.keys() == single.keys() and len(w0) > 0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ at {k}"
        torch.testing.assert_close(w0[k], single[k], rtol=1e-4, atol=1e-5)
    init = load_file(str(two / "init.safetensors"))
    moved = max((w0[k] - init[k]).abs().max().item() for k in w0)
    assert moved > 1e-3, "the run did not train"
