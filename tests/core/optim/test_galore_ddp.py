"""Layerwise GaLore through ``fit``: two processes (torchrun, gloo) with gradient accumulation end with
the weights of one process with the same global batch (layerwise == ``step()`` is checked in process in
test_galore.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import free_port, launch_env
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("galore_ddp_worker.py")




@pytest.mark.timeout(300)
def test_layerwise_two_processes_with_accumulation_match_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    for d in (two, one):
        d.mkdir()
    cmds = [
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
         str(WORKER), str(two), "2", "2", "1"],  # 2 processes x batch 2 x 2 micro-batches, layerwise
        [sys.executable, str(WORKER), str(one), "4", "2", "1"],  # layerwise, one process, same global batch 8
    ]
    for cmd in cmds:
        r = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=280)
        assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    single = load_file(str(one / "rank0.safetensors"))
    init = load_file(str(two / "init.safetensors"))
    assert w0.keys() == w1.keys() == single.keys() and len(w0) > 5
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ at {k}"
        torch.testing.assert_close(w0[k], single[k], rtol=1e-4, atol=2e-5)
    moved = max((w0[k] - init[k]).abs().max().item() for k in w0)
    assert moved > 1e-3, "the run did not train"
