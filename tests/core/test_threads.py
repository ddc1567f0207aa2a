"""``train.threads``: torch's CPU thread count for a run, through ``fit`` and ``adaptome train``; the caller's
count is restored afterwards, and a resumed run may change it (it is not part of the run's identity)."""

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.train.loop import fit
from adaptome.core.train.threads import torch_threads


@pytest.fixture
def caller_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(saved)


class _Seen:
    def __init__(self):
        self.threads = []

    def on_step_start(self, state):
        self.threads.append(torch.get_num_threads())


def _fit(tmp_path, **options):
    torch.manual_seed(0)
    xs = [{"x": torch.randn(4), "y": torch.randn(2)} for _ in range(8)]
    seen = _Seen()
    fit(torch.nn.Linear(4, 2), xs, loss_fn=lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(), hooks=[seen],
        output_dir=str(tmp_path / "run"), max_steps=3, batch_size=4, save_every=0, progress=False, cpu=True,
        **options)
    return seen.threads


def test_fit_trains_with_its_threads_and_gives_the_callers_back(tmp_path, caller_threads):
    assert _fit(tmp_path / "a", threads=1) == [1, 1, 1]
    assert torch.get_num_threads() == caller_threads
    assert _fit(tmp_path / "b") == [caller_threads] * 3  # 0, the default: torch's setting as the caller left it


def test_threads_restored_when_the_run_fails(caller_threads):
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(ValueError, match="threads must be >= 0"), torch_threads(-1):
        pass


def test_adaptome_train_sets_threads_and_a_resume_may_change_them(tmp_path, caller_threads, monkeypatch):
    cli._add_domain_apps()
    (tmp_path / "lines.txt").write_text("\n".join("abcdefghij" * 4 for _ in range(24)) + "\n")
    cfg = {"model": {"kind": "causal", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                                 "intermediate_size": 64}},
           "data": {"train_files": [str(tmp_path / "lines.txt")], "block_size": 32},
           "adapter": {"method": "lora_native", "options": {"r": 2}},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4, "lr": 0.01,
                     "progress": False, "log_every": 1, "save_every": 2}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
    res = CliRunner().invoke(cli.app, ["train", "-c", str(path), "--set", "train.threads=1"])
    assert res.exit_code == 0, res.output
    assert calls[0] == 1 and calls[-1] == caller_threads and torch.get_num_threads() == caller_threads
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["threads"] == 1
    shutil.rmtree(tmp_path / "run" / "adapter")  # extended: the finished run's adapter set aside, so it resumes
    shutil.rmtree(tmp_path / "run" / "merged", ignore_errors=True)
    res = CliRunner().invoke(cli.app, ["train", "-c", str(path), "--set", "train.max_steps=3", "--set",
                                       "train.threads=2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 3
