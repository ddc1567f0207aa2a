"""Strict YAML <-> dataclass configs and ``--set`` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from adaptome.core.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Data:
    path: Optional[str] = None
    max_len: int | None = 128
    files: list[str] = field(default_factory=list)


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    bf16: bool = False
    optim: Optim = field(default_factory=Optim)
    data: Data = field(default_factory=Data)
    extra: dict[str, float] = field(default_factory=dict)


def test_set_override_parses_yaml_values():
    cfg = load_config(Run, None, ["optim.lr=1e-4", "steps=200", "bf16=true", "name=tiny"])
    assert cfg.optim.lr == 1e-4 and type(cfg.optim.lr) is float
    assert cfg.steps == 200 and cfg.bf16 is True and cfg.name == "tiny"


def test_int_given_for_float_becomes_float():
    cfg = load_config(Run, None, ["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float


def test_yaml_then_overrides_nested(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: a\noptim:\n  lr: 0.01\n  schedule: linear\ndata:\n  files: [x.fa, y.fa]\n")
    cfg = load_config(Run, path, ["optim.schedule=cosine", "data.max_len=null"])
    assert cfg.name == "a" and cfg.optim.lr == 0.01 and cfg.optim.schedule == "cosine"
    assert cfg.data.files == ["x.fa", "y.fa"] and cfg.data.max_len is None
    assert isinstance(cfg.optim, Optim) and isinstance(cfg.data, Data)


def test_literal_choices_are_checked():
    with pytest.raises(ConfigError, match=r"optim\.schedule: 'cosin' is not one of 'constant', 'linear', 'cosine'"):
        load_config(Run, None, ["optim.schedule=cosin"])


def test_optional_fields():
    assert load_config(Run, None, ["data.path=/x"]).data.path == "/x"
    assert load_config(Run, None, ["data.path=null"]).data.path is None
    with pytest.raises(ConfigError, match=r"data\.path"):
        load_config(Run, None, ["data.path=3"])
    with pytest.raises(ConfigError, match=r"data\.max_len"):
        load_config(Run, None, ["data.max_len=1.5"])


def test_wrong_types_name_the_key():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Run, None, ["steps=true"])  # a bool is not an int
    with pytest.raises(ConfigError, match="bf16: expected true or false"):
        load_config(Run, None, ["bf16=1"])
    with pytest.raises(ConfigError, match=r"optim: expected a mapping"):
        load_config(Run, None, ["optim=3"])
    with pytest.raises(ConfigError, match=r"optim\.betas: expected 2 items"):
        load_config(Run, None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"extra\.w"):
        load_config(Run, None, ["extra.w=heavy"])


def test_unknown_override_key_and_bad_form():
    with pytest.raises(ConfigError, match=r"--set: unknown key 'optim\.lrr'"):
        load_config(Run, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(Run, None, ["optim.lr"])


def test_apply_overrides_does_not_mutate_input():
    data = {"optim": {"lr": 0.1}}
    out = apply_overrides(data, ["optim.lr=0.2", "data.path=p"])
    assert data == {"optim": {"lr": 0.1}}
    assert out == {"optim": {"lr": 0.2}, "data": {"path": "p"}}


def test_save_config_roundtrip(tmp_path):
    cfg = load_config(Run, None, ["optim.lr=2e-5", "data.files=[a, b]", "extra.w=0.5"])
    path = save_config(cfg, tmp_path / "out")
    assert path.name == "config.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["optim"]["betas"] == [0.9, 0.999]  # tuples written as YAML lists
    assert load_config(Run, path) == cfg
    assert from_dict(Run, to_dict(cfg)) == cfg
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.yaml"]  # no temp file left


def test_exponent_without_dot_is_a_float_in_yaml_files_too(tmp_path):
    # PyYAML's YAML 1.1 rules read "1e-4" as a string; the config loader reads it as YAML 1.2 does
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3e-4\nextra:\n  w: -2E+1\nname: '1e-4'\n")
    cfg = load_config(Run, path)
    assert cfg.optim.lr == 3e-4 and cfg.extra == {"w": -20.0}
    assert cfg.name == "1e-4"  # quoted stays a string


@dataclass
class Inner:
    lr: float = 1e-3
    out: str = "runs/generic"


@dataclass
class Middle:
    inner: Inner = field(default_factory=lambda: Inner(lr=5e-5, out="runs/stage1"))
    steps: int = 1


@dataclass
class Stage:
    middle: Middle = field(default_factory=lambda: Middle(inner=Inner(lr=2e-4, out="runs/stage2"), steps=7))


def test_partial_section_keeps_the_enclosing_configs_defaults(tmp_path):
    """``--set train.x=...`` (or a YAML with half a section) must not reset the section's other fields to the
    section class's generic defaults: the stage's own output folder and rate stay."""
    cfg = load_config(Stage, None, ["middle.inner.lr=0.1"])
    assert cfg.middle.inner == Inner(lr=0.1, out="runs/stage2") and cfg.middle.steps == 7
    path = tmp_path / "stage.yaml"
    path.write_text("middle:\n  steps: 3\n")
    cfg = load_config(Stage, path)
    assert cfg.middle.inner == Inner(lr=2e-4, out="runs/stage2") and cfg.middle.steps == 3
    with pytest.raises(ConfigError, match=r"unknown key 'middle\.inner\.lrr'"):
        load_config(Stage, None, ["middle.inner.lrr=0.1"])
