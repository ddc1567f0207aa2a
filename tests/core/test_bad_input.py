"""Bad input to the core gets a one-line error naming the file (or key) and the problem, and
nothing already written is lost or left half-done."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from adaptome.core.adapters import api, io
from adaptome.core.adapters.targets import TargetError
from adaptome.core.config import ConfigError, load_config
from adaptome.core.registry import RegistryError


@dataclass
class _Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class _Run:
    name: str = "run"
    steps: int = 10
    optim: _Optim = field(default_factory=_Optim)


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg, f"multi-line error: {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def test_yaml_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\noptim:\n  lr: 0.1\n  lrr: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(_Run, path)
    msg = _one_line(e.value)
    assert str(path) in msg and "'optim.lrr'" in msg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\nsteps: 3\noptim: {lr: 0.1\n")  # unclosed flow mapping
    with pytest.raises(ConfigError) as e:
        load_config(_Run, path)
    msg = _one_line(e.value)
    assert str(path) in msg and "invalid YAML" in msg
    assert "line 4" in msg  # the parser notices at end of input, the line after the brace
    path.write_text("name: x\n  steps: 3\n")  # bad indentation on line 2
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(_Run, path)


def test_yaml_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: ten\n")
    with pytest.raises(ConfigError) as e:
        load_config(_Run, path)
    msg = _one_line(e.value)
    assert str(path) in msg and "steps" in msg and "integer" in msg
    path.write_text("optim:\n  betas: [0.9, fast]\n")
    with pytest.raises(ConfigError, match=r"optim\.betas\[1\]"):
        load_config(_Run, path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Run, tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------
# methods and targets
# ---------------------------------------------------------------------------------------------
def test_unknown_method_lists_known_names():
    with pytest.raises(RegistryError) as e:
        api.make_config("lroa", {})
    msg = _one_line(e.value)
    assert "'lroa'" in msg
    for known in ("lora", "lora_native", "dora"):
        assert known in msg


def test_unknown_method_option_names_the_key():
    with pytest.raises(ConfigError, match=r"'adapter\[lora_native\]\.rank'"):
        api.make_config("lora_native", {"rank": 4})
    with pytest.raises(ConfigError, match="r must be positive"):
        api.make_config("lora_native", {"r": 0})


@pytest.fixture(scope="module")
def base(tiny_llama_factory) -> LlamaForCausalLM:
    return tiny_llama_factory()


IDS = torch.tensor([[1, 5, 9, 3, 7]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _assert_plain(model, base) -> None:
    """``model`` holds no adapter at all and computes exactly what ``base`` does."""
    assert not any(hasattr(m, "base_layer") for m in model.modules())
    assert not hasattr(model, "peft_config") and not hasattr(model, "adaptome_configs")
    assert list(model.state_dict()) == list(base.state_dict())
    assert torch.equal(_logits(model), _logits(base))


@pytest.mark.parametrize("method", ["lora_native", "lora"])
def test_target_matching_nothing_is_an_error(base, method):
    model = copy.deepcopy(base)
    cfg = api.make_config(method, {"r": 2, "target_modules": ["qproj"]})
    with pytest.raises(TargetError) as e:
        api.apply_adapter(model, cfg)
    msg = _one_line(e.value)
    assert "'qproj'" in msg and "matched no" in msg and "q_proj" in msg  # lists what exists
    _assert_plain(model, base)
    with pytest.raises(TargetError, match="matched no"):
        api.apply_adapter(model, api.make_config(method, {"r": 2, "target_modules": r".*\.nothing"}))


def test_preset_unknown_architecture_is_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(TargetError, match="no target preset for architecture 'sequential'"):
        api.apply_adapter(model, api.make_config("lora_native", {"target_modules": "attention"}))


# ---------------------------------------------------------------------------------------------
# adapter folders
# ---------------------------------------------------------------------------------------------
def _adapted(base, method: str, **opts):
    torch.manual_seed(1)
    init = {"lora_native": "random_b", "lora": False}[method]
    cfg = api.make_config(method, {"r": 2, "target_modules": "attention", "init_lora_weights": init, **opts})
    return api.apply_adapter(copy.deepcopy(base), cfg)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("method", ["lora_native", "lora"])
def test_incomplete_adapter_folder(base, method, tmp_path):
    path = io.save_adapter(_adapted(base, method), tmp_path / "adapter")
    (path / io.WEIGHTS).unlink()
    model = copy.deepcopy(base)
    with pytest.raises(io.CheckpointError) as e:
        io.load_adapter(model, path)
    msg = _one_line(e.value)
    assert str(path) in msg and io.WEIGHTS in msg and "missing" in msg
    _assert_plain(model, base)
    with pytest.raises(io.CheckpointError, match="adapter folder not found"):
        io.load_adapter(model, tmp_path / "nowhere")


def test_truncated_weights_file(base, tmp_path):
    path = io.save_adapter(_adapted(base, "lora_native"), tmp_path / "adapter")
    data = (path / io.WEIGHTS).read_bytes()
    (path / io.WEIGHTS).write_bytes(data[: len(data) // 2])
    model = copy.deepcopy(base)
    with pytest.raises(io.CheckpointError, match=io.WEIGHTS):
        io.load_adapter(model, path)
    _assert_plain(model, base)


@pytest.mark.parametrize("method", ["lora_native", "lora"])
def test_adapter_from_another_config_leaves_no_half_loaded_adapter(base, method, tmp_path, tiny_llama_factory):
    wider = tiny_llama_factory(hidden_size=48)
    path = io.save_adapter(_adapted(wider, method), tmp_path / "adapter")
    model = copy.deepcopy(base)
    with pytest.raises(io.CheckpointError) as e:
        io.load_adapter(model, path)
    msg = _one_line(e.value)
    assert str(path) in msg and "shape" in msg
    _assert_plain(model, base)


def test_failed_second_adapter_keeps_the_first(base, tmp_path, tiny_llama_factory):
    wider = tiny_llama_factory(hidden_size=48)
    bad = io.save_adapter(_adapted(wider, "lora_native"), tmp_path / "bad")
    model = _adapted(base, "lora_native")
    want = _logits(model)
    with pytest.raises(io.CheckpointError, match="shape"):
        io.load_adapter(model, bad, adapter_name="second")
    assert api.adapter_names(model) == ["default"]
    assert torch.equal(_logits(model), want)


@pytest.mark.parametrize("method", ["lora_native", "lora"])
def test_save_adapter_never_clobbers_without_overwrite(base, method, tmp_path):
    target = tmp_path / "adapter"
    io.save_adapter(_adapted(base, method), target)
    old = _snapshot(target)
    other = _adapted(base, method, r=4)
    with pytest.raises(FileExistsError) as e:
        io.save_adapter(other, target)
    assert str(target) in _one_line(e.value)
    assert _snapshot(target) == old
    io.save_adapter(other, target, overwrite=True)
    new = _snapshot(target)
    assert new[io.WEIGHTS] != old[io.WEIGHTS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp or old folders left
    reloaded = io.load_adapter(copy.deepcopy(base), target)
    assert torch.equal(_logits(reloaded), _logits(other))


def test_overwrite_that_fails_midway_keeps_the_old_folder(base, tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    io.save_adapter(_adapted(base, "lora_native"), target)
    old = _snapshot(target)

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        io.save_adapter(_adapted(base, "lora_native", r=4), target, overwrite=True)
    assert _snapshot(target) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize("method", ["lora_native", "lora"])
def test_truncated_adapter_leaves_the_model_unchanged_and_names_the_file(base, method, tmp_path):
    path = io.save_adapter(_adapted(base, method), tmp_path / "adapter")
    data = (path / io.WEIGHTS).read_bytes()
    (path / io.WEIGHTS).write_bytes(data[: len(data) // 2])
    model = copy.deepcopy(base)
    with pytest.raises(io.CheckpointError) as e:
        io.load_adapter(model, path)
    assert str(path / io.WEIGHTS) in _one_line(e.value)
    _assert_plain(model, base)


@pytest.mark.parametrize("method", ["lora_native", "lora"])
def test_flipped_bytes_in_adapter_weights_fail_the_checksum(base, method, tmp_path):
    path = io.save_adapter(_adapted(base, method), tmp_path / "adapter")
    data = bytearray((path / io.WEIGHTS).read_bytes())
    data[-5] ^= 0xFF  # inside a tensor: safetensors itself would load it silently
    (path / io.WEIGHTS).write_bytes(bytes(data))
    model = copy.deepcopy(base)
    with pytest.raises(io.CheckpointError) as e:
        io.load_adapter(model, path)
    msg = _one_line(e.value)
    assert str(path / io.WEIGHTS) in msg and "checksum" in msg
    _assert_plain(model, base)


def test_adapters_truncate_on_a_corrupt_file_is_one_line(base, tmp_path):
    from typer.testing import CliRunner

    from adaptome.core import cli

    torch.manual_seed(1)
    model = api.apply_adapter(copy.deepcopy(base), api.make_config("dylora", {"r": 4, "target_modules": "attention"}))
    path = io.save_adapter(model, tmp_path / "adapter")
    ok = CliRunner().invoke(cli.app, ["adapters", "truncate", str(path), str(tmp_path / "r2"), "--rank", "2"])
    assert ok.exit_code == 0, ok.output
    io.load_adapter(copy.deepcopy(base), tmp_path / "r2")  # its checksum is recorded and right
    data = (path / io.WEIGHTS).read_bytes()
    (path / io.WEIGHTS).write_bytes(data[: len(data) // 2])
    res = CliRunner().invoke(cli.app, ["adapters", "truncate", str(path), str(tmp_path / "r1"), "--rank", "1"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and str(path / io.WEIGHTS) in res.output
    assert not (tmp_path / "r1").exists()


# ---------------------------------------------------------------------------------------------
# training options that cannot work
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, named", [
    ("train.lr=.inf", "train.lr: must be a finite number > 0, got inf"),
    ("train.lr=0", "train.lr: must be a finite number > 0"),
    ("data.block_size=0", "data.block_size: must be >= 1"),
    ("train.warmup_steps=200", "train.warmup_steps: 200 is more than max_steps (100)"),
    ("train.save_every=-1", "train.save_every: must be >= 0, got -1"),
    ("train.max_grad_norm=-1.0", "train.max_grad_norm: must be a finite number >= 0"),
    ("train.dist_timeout_s=0", "train.dist_timeout_s: must be a finite number > 0"),
    ("train.betas=[0.9, 1.5]", "train.betas: must be two numbers in [0, 1)"),
    ("train.threads=-1", "train.threads: must be >= 0, got -1"),
])
def test_impossible_training_values_are_refused_naming_the_key(tmp_path, override, named):
    from adaptome.core.generic_train import RunConfig

    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 100\n")
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, path, [override])
    msg = _one_line(e.value)
    assert str(path) in msg and named in msg, msg


def test_impossible_value_through_the_cli_is_one_line_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from adaptome.core import cli

    (tmp_path / "t.txt").write_text("abc\n")
    path = tmp_path / "run.yaml"
    path.write_text(f"data:\n  train_files: [{tmp_path / 't.txt'}]\ntrain:\n  output_dir: {tmp_path / 'out'}\n")
    res = CliRunner().invoke(cli.app, ["train", "--config", str(path), "--set", "train.lr=.inf"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "train.lr" in res.output
    assert not (tmp_path / "out").exists()


def test_fit_refuses_unknown_and_impossible_options():
    from adaptome.core.train.loop import TrainConfig, fit

    with pytest.raises(TypeError, match=r"unknown training option\(s\) \['max_step'\]"):
        fit(torch.nn.Linear(2, 2), [], max_step=3)
    with pytest.raises(ConfigError, match=r"^lr: must be a finite number > 0, got nan$"):
        fit(torch.nn.Linear(2, 2), [], lr=float("nan"))
    with pytest.raises(ConfigError, match="warmup_steps"):
        fit(torch.nn.Linear(2, 2), [], TrainConfig(max_steps=5), warmup_steps=6)


def test_non_utf8_training_file_names_the_file_and_line(tmp_path):
    from typer.testing import CliRunner

    from adaptome.core import cli

    bad = tmp_path / "t.txt"
    bad.write_bytes("first line\nsecond line caf\u00e9\n".encode() + b"third \xff line\n")
    path = tmp_path / "run.yaml"
    path.write_text(f"data:\n  train_files: [{bad}]\ntrain:\n  output_dir: {tmp_path / 'out'}\n")
    res = CliRunner().invoke(cli.app, ["train", "--config", str(path)])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"{bad}:3: not UTF-8 text (byte 0xff at column 7)" in res.output
    assert not (tmp_path / "out").exists()
