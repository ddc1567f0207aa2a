"""``optimizer: {name: galore}`` with a rank at or above a projected matrix's smaller dimension: the rank is
clipped, the projection is a full-rank rotation, and the optimizer state is no smaller than AdamW's (the
projector comes on top). Before, this was silent (the default rank 128 on a model narrower than 128 saved
nothing); now ``adaptome train`` warns, naming the count of such matrices and the option."""

import warnings

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.optim import galore as G

runner = CliRunner()


def _config(tmp_path, rank) -> str:
    (tmp_path / "lines.txt").write_text("\n".join(["the cat sat on the mat and looked at the dog"] * 12) + "\n")
    cfg = {
        "model": {"kind": "causal", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                             "intermediate_size": 64}},
        "data": {"train_files": [str(tmp_path / "lines.txt")], "block_size": 32},
        "adapter": {"method": "lora", "options": {"r": 4, "target_modules": "attention"}},
        "optimizer": {"name": "galore", "options": {"rank": rank, "update_proj_gap": 2}},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 4, "lr": 0.01,
                  "progress": False, "threads": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_rank_at_full_dimension_warns_through_train(tmp_path):
    with pytest.warns(UserWarning, match=r"galore rank 8 is >= min\(out, in\) of 8 of the 8 projected weights"):
        res = runner.invoke(cli.app, ["train", "-c", _config(tmp_path, 8)])
    assert res.exit_code == 0, res.output


def test_a_rank_below_every_dimension_does_not_warn(tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = runner.invoke(cli.app, ["train", "-c", _config(tmp_path, 2)])
    assert res.exit_code == 0, res.output
    assert not [w for w in seen if "galore rank" in str(w.message)]


def test_full_rank_state_is_not_smaller_than_adamw():
    """The fact behind the warning: at rank >= min(M, N) GaLore's state is AdamW's plus the projector."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12))
    with pytest.warns(UserWarning, match="galore rank"):
        opt = G.galore_optimizer(net, G.GaLoreConfig(rank=16), lr=1e-3)
    adamw = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for o in (opt, adamw):
        o.zero_grad()
        net(torch.randn(4, 6)).sum().backward()
        o.step()
    assert G.state_bytes(opt) > G.state_bytes(adamw)
