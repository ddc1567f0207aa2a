"""Fault injection: training survives kills, corrupt files, full disks and Ctrl-C with nothing lost,
and says what happened in one line; a resume continues only what the same configuration made.

Kills are real (``kill -9`` of a subprocess at a chosen point, this file run as a script); a full
disk is a patched writer raising ``OSError(ENOSPC)`` (a tmpfs cannot be mounted here); corruption is
truncated or flipped bytes. "Bit-identical" compares with an uninterrupted run of the same process
settings (one thread).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models as tiny
import torch
import yaml
from safetensors.torch import load_file

from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.errors import AdaptomeError
from adaptome.core.train import checkpoint as ckpt_mod
from adaptome.core.train import metrics as metrics_mod
from adaptome.core.train.checkpoint import ResumeError, list_checkpoints
from adaptome.core.train.interrupt import Interrupted
from adaptome.core.train.loop import fit
from adaptome.core.train.metrics import read_metrics

# the tiny LLaMA's sizes (tests/tiny_models.py), built seeded and in train mode as a fresh module is
TINY = dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
            eval_mode=False)
# constant schedule: a run may be extended (max_steps may change on resume) and still equal the reference
KW = dict(max_steps=8, batch_size=4, lr=1e-2, schedule="constant", progress=False, log_every=1, save_every=2,
          keep_last=2)


def _model():
    return apply_adapter(tiny.llama(**TINY), make_config("lora_native", {"r": 2, "lora_dropout": 0.1}))


def _data(n=32, t=8):
    g = torch.Generator().manual_seed(1)
    seqs = (torch.randint(0, 16, (n, 1), generator=g) + torch.arange(t)) % 16  # (n, t)
    return [{"input_ids": s, "labels": s} for s in seqs]


def _collate(b):
    return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)


def _fit(out, **kw):
    return fit(_model(), _data(), collate_fn=_collate, output_dir=str(out), **{**KW, **kw})


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(a, b):
    a, b = _trainable(a), _trainable(b)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _steps(out):
    return [r["step"] for r in read_metrics(Path(out) / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-step run."""
    return _fit(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def cut_at_6(tmp_path_factory):
    """A run that stopped after step 6 (checkpoints 4 and 6); each test works on a copy."""
    out = tmp_path_factory.mktemp("cut6")
    _fit(out, max_steps=6)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [4, 6]
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# kill -9 (this file, run as a script, is the killed process)
# ---------------------------------------------------------------------------------------------
def _worker(out: str, mode: str) -> None:
    """``after5``: SIGKILL right after step 5; ``mid_ckpt6``: SIGKILL while step 6's checkpoint is
    half-written (after optimizer.pt, before the rest)."""
    torch.set_num_threads(1)

    class KillAfter5:
        def after_optimizer_step(self, state):
            if state.step == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    hooks = [KillAfter5()] if mode == "after5" else []
    if mode == "mid_ckpt6":
        real_save = ckpt_mod.torch.save

        def save(obj, path, *a, **k):
            real_save(obj, path, *a, **k)
            if Path(path).name == "optimizer.pt" and ".step-6" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)

        ckpt_mod.torch.save = save
    _fit(out, hooks=hooks)


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Both killed runs, started together (each spends most of its time importing)."""
    tests_dir = str(Path(__file__).resolve().parents[1])  # this file, run as a script, imports tiny_models
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
    outs = {mode: tmp_path_factory.mktemp(mode) / "run" for mode in ("after5", "mid_ckpt6")}
    procs = {mode: subprocess.Popen([sys.executable, __file__, str(out), mode], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for mode, out in outs.items()}
    for mode, p in procs.items():
        _, err = p.communicate(timeout=240)
        assert p.returncode == -signal.SIGKILL, err[-2000:]
    return outs


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode, resumed_from", [("after5", 4), ("mid_ckpt6", 4)])
def test_kill9_then_resume_is_bit_identical(killed_runs, reference, mode, resumed_from, caplog):
    out = killed_runs[mode]
    if mode == "mid_ckpt6":
        assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".step-6.tmp-")]
    with caplog.at_level(logging.WARNING):
        res = _fit(out, hooks=[])
    assert res.resumed_from == resumed_from
    _assert_same(res.model, reference.model)
    assert _steps(out) == list(range(1, 9))  # the log reads as one run
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # temp folder removed
    if mode == "mid_ckpt6":
        assert "half-written" in caplog.text


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------
class _CtrlCAt:
    def __init__(self, step):
        self.step = step

    def after_optimizer_step(self, state):
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal: the handler lets the step finish


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        _fit(out, hooks=[_CtrlCAt(3)])
    msg = str(e.value)
    assert "\n" not in msg and "interrupted at step 3 of 8" in msg
    assert str(out / "checkpoints" / "step-3") in msg and "run the same command again to resume" in msg
    assert isinstance(e.value, AdaptomeError) and isinstance(e.value, KeyboardInterrupt)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back
    res = _fit(out, hooks=[_CtrlCAt(-1)])
    assert res.resumed_from == 3
    _assert_same(res.model, reference.model)


def test_ctrl_c_at_the_last_step_finishes_the_run(tmp_path):
    res = _fit(tmp_path / "run", hooks=[_CtrlCAt(8)], eval_fn=lambda m: {"x": 1.0})
    assert res.step == 8 and [r["step"] for r in res.history if "eval/x" in r] == [8]
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [6, 8]


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def test_torn_metrics_line_is_dropped_on_resume(tmp_path, cut_at_6, reference, caplog):
    out = _copy(cut_at_6, tmp_path)
    with (out / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 7, "loss": 1.23')  # the disk filled up mid-record
    with caplog.at_level(logging.WARNING):
        res = _fit(out)
    assert f"{out / 'metrics.jsonl'}:7: torn last line dropped" in caplog.text
    assert res.resumed_from == 6 and _steps(out) == list(range(1, 9))
    _assert_same(res.model, reference.model)


def test_metrics_write_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    log = metrics_mod.MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": 1.0})
    monkeypatch.setattr(metrics_mod.os, "write", lambda fd, data: len(data) // 2)  # a short write
    with pytest.raises(OSError) as e:
        log.write({"step": 2, "loss": 0.5})
    assert e.value.filename == str(tmp_path / "metrics.jsonl") and e.value.errno == errno.ENOSPC


# ---------------------------------------------------------------------------------------------
# corrupt, stale and stray checkpoints
# ---------------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 3] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, damage", [("optimizer.pt", _truncate), ("trainable.safetensors", _truncate),
                                          ("rng.pt", _truncate), ("trainable.safetensors", _flip)])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, cut_at_6, reference, caplog, name, damage):
    out = _copy(cut_at_6, tmp_path)
    bad = out / "checkpoints" / "step-6" / name
    damage(bad)
    with caplog.at_level(logging.WARNING):
        res = _fit(out)
    assert f"{bad}: corrupt" in caplog.text
    assert f"resuming from {out / 'checkpoints' / 'step-4'} instead" in caplog.text
    assert res.resumed_from == 4
    _assert_same(res.model, reference.model)


def test_only_checkpoint_corrupt_is_named(tmp_path, cut_at_6):
    out = _copy(cut_at_6, tmp_path)
    shutil.rmtree(out / "checkpoints" / "step-4")
    bad = out / "checkpoints" / "step-6" / "optimizer.pt"
    _truncate(bad)
    with pytest.raises(ResumeError) as e:
        _fit(out)
    assert f"{bad}: corrupt" in str(e.value) and "no earlier intact checkpoint" in str(e.value)
    assert "\n" not in str(e.value)


def test_stale_temp_folder_and_empty_stray_step_do_not_block_resume(tmp_path, cut_at_6, reference, caplog):
    out = _copy(cut_at_6, tmp_path)
    stale = out / "checkpoints" / ".step-8.tmp-12345"
    stale.mkdir()
    (stale / "optimizer.pt").write_bytes(b"half")
    (out / "checkpoints" / "step-999").mkdir()
    (out / ".metrics.jsonl.tmp-x1").write_text("half")  # a metrics rewrite cut short
    (out / ".adapter.tmp-abc").mkdir()  # not fit's to clean (adaptome train cleans its own folder)
    with caplog.at_level(logging.WARNING):
        res = _fit(out)
    assert res.resumed_from == 6 and not stale.exists() and not (out / ".metrics.jsonl.tmp-x1").exists()
    assert (out / ".adapter.tmp-abc").exists()
    assert f"ignoring {out / 'checkpoints' / 'step-999'}: not a complete checkpoint" in caplog.text
    _assert_same(res.model, reference.model)


# ---------------------------------------------------------------------------------------------
# disk full while checkpointing
# ---------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_disk_full_while_checkpointing_names_the_path_and_keeps_earlier_checkpoints(tmp_path, cut_at_6,
                                                                                      monkeypatch):
    out = _copy(cut_at_6, tmp_path)
    before = _snapshot(out / "checkpoints")

    def full(obj, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    with pytest.raises(OSError) as e:
        _fit(out)
    assert e.value.filename == str(out / "checkpoints" / "step-8") and e.value.errno == errno.ENOSPC
    assert _snapshot(out / "checkpoints") == before  # step-4 and step-6 intact, no temp folder


# ---------------------------------------------------------------------------------------------
# adaptome train: what may change on resume, config.yaml, summary, full disk
# ---------------------------------------------------------------------------------------------
def _text(path: Path, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    path.write_text("".join("".join(rng.choice("abcdefgh") for _ in range(40)) + "\n" for _ in range(24)))
    return path


def _run_yaml(tmp_path: Path, **train) -> Path:
    cfg = {"model": {"tiny": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}},
           "data": {"train_files": [str(_text(tmp_path / "train.txt", 0))], "block_size": 32},
           "adapter": {"method": "lora_native", "options": {"r": 2, "lora_alpha": 4.0}},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 4, "lr": 0.01,
                     "progress": False, "log_every": 1, "save_every": 2, **train}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def app():
    from adaptome.core import cli

    return cli.app


def _train(app, cfg, *args):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, ["train", "--config", str(cfg), *args])


def test_resume_refuses_another_configuration_naming_what_changed(app, tmp_path):
    cfg = _run_yaml(tmp_path)
    res = _train(app, cfg)
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    shutil.rmtree(out / "adapter")  # an interrupted run's folder: checkpoints, no adapter/ yet
    shutil.rmtree(out / "merged")
    kept = _snapshot(out)
    other_file = _text(tmp_path / "other.txt", 1)  # the same size, another content
    assert other_file.stat().st_size == (tmp_path / "train.txt").stat().st_size
    cases = [(["--set", "adapter.options.lora_alpha=8"], "adapter.options.lora_alpha: 4.0 -> 8.0"),
             (["--set", f"data.train_files=[{other_file}]"], "data.train_files.0.sha256"),
             (["--set", "model.tiny.num_heads=4"], "model.tiny.num_heads: 2 -> 4")]
    for args, named in cases:
        res = _train(app, cfg, *args)  # --overwrite would start again (test_audit_train3_runs)
        assert res.exit_code == 2, res.output
        line = res.output.strip()
        assert "\n" not in line, repr(res.output)
        assert "another configuration" in line and named in line, line
        assert _snapshot(out) == kept  # config.yaml, adapter, checkpoints: untouched


def test_summary_reports_the_whole_run_after_resume_and_overwrite(app, tmp_path):
    cfg = _run_yaml(tmp_path)
    assert _train(app, cfg).exit_code == 0
    out = tmp_path / "run"
    first = json.loads((out / "summary.json").read_text())
    assert first["first_loss"] is not None and first["resumed_from"] is None
    res = _train(app, cfg, "--overwrite")  # starts again (the same seeded run: the same losses)
    assert res.exit_code == 0, res.output
    again = json.loads((out / "summary.json").read_text())
    assert again["resumed_from"] is None and again["steps"] == 4
    assert again["first_loss"] == pytest.approx(first["first_loss"]) and again["last_loss"] == pytest.approx(
        first["last_loss"])
    # extending a finished run: its adapter set aside, the same command with more steps resumes from step 4
    shutil.rmtree(out / "adapter")
    shutil.rmtree(out / "merged", ignore_errors=True)
    res = _train(app, cfg, "--set", "train.max_steps=6")
    assert res.exit_code == 0, res.output
    longer = json.loads((out / "summary.json").read_text())
    assert longer["steps"] == 6 and longer["resumed_from"] == 4
    assert longer["first_loss"] == pytest.approx(first["first_loss"])
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 6


def test_disk_full_on_merged_save_and_config_is_one_line_and_keeps_the_old(app, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    import adaptome.core.atomic as atomic

    cfg = _run_yaml(tmp_path)
    assert _train(app, cfg).exit_code == 0
    out = tmp_path / "run"
    merged = _snapshot(out / "merged")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(PreTrainedModel, "save_pretrained", full)
        res = _train(app, cfg, "--overwrite")
    assert res.exit_code == 2 and res.output.strip() == f"error: {out / 'merged'}: No space left on device"
    assert _snapshot(out / "merged") == merged
    config = (out / "config.yaml").read_bytes()
    real_fsync = os.fsync

    def config_disk_full(fd):  # the disk fills up while config.yaml is written (other files still fit)
        if ".config.yaml.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            full()
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(atomic.os, "fsync", config_disk_full)
        res = _train(app, cfg, "--overwrite", "--set", "train.max_steps=6")
    assert res.exit_code == 2 and res.output.strip() == f"error: {out / 'config.yaml'}: No space left on device"
    assert (out / "config.yaml").read_bytes() == config
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]


def test_adaptome_train_cleans_temp_folders_of_a_killed_run(app, tmp_path):
    cfg = _run_yaml(tmp_path)
    out = tmp_path / "run"
    (out / ".adapter.tmp-x1").mkdir(parents=True)
    (out / ".merged.tmp-x2").mkdir()
    (out / ".config.yaml.tmp-x3").write_text("half")
    res = _train(app, cfg)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints", "config.yaml", "merged",
                                                      "metrics.jsonl", "summary.json"]
    assert load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_ctrl_c_in_adaptome_train_is_one_line_and_the_run_resumes(app, tmp_path, ctrl_c_at):
    cfg = _run_yaml(tmp_path, max_steps=6, save_every=4)
    with ctrl_c_at(3):
        res = _train(app, cfg)
    out = tmp_path / "run"
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("error: interrupted at step 3 of 6")
    assert str(out / "checkpoints" / "step-3") in res.output
    res = _train(app, cfg)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == 3 and summary["steps"] == 6


def test_every_torch_load_reads_weights_only():
    """No pickle payload runs: every ``torch.load`` call in the package passes ``weights_only=True``."""
    import re

    root = Path(__file__).resolve().parents[2]
    calls = []
    for folder in ("core", "domains"):
        for f in (root / folder).rglob("*.py"):
            calls += [(f, m.group(0)) for m in re.finditer(r"torch\.load\([^)]*\)", f.read_text())]
    assert calls, "no torch.load found: the scan is broken"
    assert all("weights_only=True" in c for _, c in calls), [c for c in calls if "weights_only=True" not in c[1]]


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
