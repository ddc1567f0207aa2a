"""``adaptome adapters merge``: LoRA-LEGO and the linear / cat / TIES / DARE baselines on three peft LoRAs
of different ranks (2, 3, 4; different alphas, one with rsLoRA, one adapting an extra module) on a
tiny LLaMA.

References are independent of our reader: each input's update comes from peft itself
(``get_delta_weight`` of the loaded adapter), and the cat / TIES merges are compared with peft's
``add_weighted_adapter``.
"""

from __future__ import annotations

import copy
import json

import peft
import pytest
import tiny_models as tiny
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.merge import MERGERS, lego
from adaptome.core.merge.factors import read_lora

runner = CliRunner()
SPECS = [  # (rank, alpha, rslora, targets)
    (2, 4.0, False, ["q_proj", "v_proj"]),
    (3, 3.0, True, ["q_proj", "v_proj"]),
    (4, 16.0, False, ["q_proj", "v_proj", "o_proj"]),
]


def _base():
    return tiny.llama()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = _base()
    base.save_pretrained(root / "base")
    paths = []
    for i, (r, alpha, rs, targets) in enumerate(SPECS):
        torch.manual_seed(10 + i)
        pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=r, lora_alpha=alpha, use_rslora=rs, target_modules=targets, init_lora_weights=False))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.3)
        pm.save_pretrained(root / f"lora{i}")
        paths.append(root / f"lora{i}")
    return root, base, paths


def _peft_deltas(base, path) -> dict[str, torch.Tensor]:
    """Each adapted module's update as peft computes it (our reader is not involved)."""
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(path))
    return {n.removeprefix("base_model.model."): m.get_delta_weight("default").double()
            for n, m in pm.named_modules() if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {})}


def _sum_deltas(base, paths) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        for m, d in _peft_deltas(base, p).items():
            total[m] = total.get(m, 0) + d
    return total


def _logits_with(base, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    model = copy.deepcopy(base)
    with torch.no_grad():
        for m, d in deltas.items():
            model.get_submodule(m).weight += d.float()
    return _logits(model)


def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(input_ids=ids).logits


def _merge(*args):
    return runner.invoke(cli.app, ["adapters", "merge", *map(str, args)])


def _merged_deltas(path) -> dict[str, torch.Tensor]:
    return {m: b @ a for m, (b, a) in read_lora(path).factors.items()}


# ---------------------------------------------------------------------------------------------
def test_reader_matches_peft_deltas(setup):
    _, base, paths = setup
    for p in paths:
        ours, theirs = _merged_deltas(p), _peft_deltas(base, p)
        assert sorted(ours) == sorted(theirs)
        for m in ours:
            torch.testing.assert_close(ours[m], theirs[m], atol=1e-6, rtol=0)


def _permuted_copy(src, dst, seed: int):
    """``src`` with the ranks of every module permuted (B's columns and A's rows alike)."""
    dst.mkdir()
    state = load_file(str(src / "adapter_model.safetensors"))
    for k in [k for k in state if ".lora_A." in k]:
        perm = torch.arange(state[k].shape[0]).roll(seed).flip(0)  # never the identity for r >= 2
        b = k.replace(".lora_A.", ".lora_B.")
        state[k], state[b] = state[k][perm].contiguous(), state[b][:, perm].contiguous()
    save_file(state, str(dst / "adapter_model.safetensors"))
    (dst / "adapter_config.json").write_text((src / "adapter_config.json").read_text())


def test_lego_is_invariant_to_unit_permutation_and_input_order(setup, tmp_path):
    _, base, paths = setup
    perm = [tmp_path / f"p{i}" for i in range(3)]
    for i, p in enumerate(paths):
        _permuted_copy(p, perm[i], seed=i)
        a, b = _merged_deltas(p), _merged_deltas(perm[i])  # a permutation leaves each update unchanged
        for m in a:
            torch.testing.assert_close(a[m], b[m], atol=1e-12, rtol=0)
        assert not torch.equal(read_lora(p).factors[next(iter(a))][1], read_lora(perm[i]).factors[next(iter(a))][1])
    loras = [read_lora(p) for p in paths]
    shuffled = [read_lora(p) for p in reversed(perm)]
    one = lego.merge(loras, 3)
    two = lego.merge(shuffled, 3)
    assert sorted(one) == sorted(two)
    for m in one:
        assert torch.equal(one[m][0], two[m][0]) and torch.equal(one[m][1], two[m][1]), m


def test_lego_k_sum_of_ranks_without_reweighting_is_the_sum_of_updates(setup, tmp_path):
    root, base, paths = setup
    res = _merge("--method", "lego", *paths, "--rank", 9, "--no-reweight", "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    want = _sum_deltas(base, paths)
    got = _merged_deltas(tmp_path / "m")
    assert sorted(got) == sorted(want)
    for m in want:
        torch.testing.assert_close(got[m], want[m], atol=1e-6, rtol=0)
    loaded = peft.PeftModel.from_pretrained(type(base).from_pretrained(root / "base"), str(tmp_path / "m")).eval()
    torch.testing.assert_close(_logits(loaded), _logits_with(base, want), atol=1e-5, rtol=0)


def test_lego_k_sum_of_ranks_with_dual_reweighting_is_sqrt_r_over_k_times_the_sum(setup, tmp_path):
    """Through the CLI, default reweighting: every unit is its own centroid (parameter reweighting is the
    identity) and the update is sqrt(r / k) times the sum, r the holders' mean rank, k their unit count:
    q/v are held by ranks 2, 3, 4 (sqrt(3 / 9)); o_proj only by the rank-4 input (sqrt(4 / 4) = 1)."""
    _, base, paths = setup
    res = _merge("--method", "lego", *paths, "--rank", 9, "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    want = _sum_deltas(base, paths)
    got = _merged_deltas(tmp_path / "m")
    assert sorted(got) == sorted(want)
    for m in want:
        scale = 1.0 if m.endswith("o_proj") else (3 / 9) ** 0.5
        torch.testing.assert_close(got[m], scale * want[m], atol=1e-6, rtol=0)


LOAD_CASES = [
    ("lego", ["--rank", 3]), ("lego", ["--rank", 2, "--no-reweight"]),
    ("lego", ["--rank", 3, "--centroid", "update", "--cluster-on", "updates"]), ("linear", ["--rank", 4]),
    ("cat", []), ("ties", ["--rank", 4, "--density", 0.5]), ("dare", ["--rank", 4, "--density", 0.7]),
]


def test_every_registered_merge_method_is_load_tested():
    assert {m for m, _ in LOAD_CASES} == set(MERGERS.names())


@pytest.mark.parametrize("method,extra", LOAD_CASES)
def test_merged_adapter_loads_in_plain_peft_with_its_updates(setup, tmp_path, method, extra):
    root, base, paths = setup
    res = _merge("--method", method, *paths, *extra, "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"
    deltas = _merged_deltas(tmp_path / "m")
    assert {m for m in deltas} == set(_sum_deltas(base, paths))
    loaded = peft.PeftModel.from_pretrained(type(base).from_pretrained(root / "base"), str(tmp_path / "m")).eval()
    torch.testing.assert_close(_logits(loaded), _logits_with(base, deltas), atol=1e-5, rtol=0)
    assert not torch.allclose(_logits(loaded), _logits(base), atol=1e-3)


def test_linear_at_full_rank_and_cat_equal_the_weighted_sum(setup, tmp_path):
    _, base, paths = setup
    w = [0.5, -1.0, 2.0]
    want: dict[str, torch.Tensor] = {}
    for p, wi in zip(paths, w):
        for m, d in _peft_deltas(base, p).items():
            want[m] = want.get(m, 0) + wi * d
    for method, extra in (("linear", ["--rank", 9]), ("cat", [])):
        res = _merge("--method", method, *paths, *extra, "--weights", "0.5,-1,2", "--out", tmp_path / method)
        assert res.exit_code == 0, res.output
        assert "relative distance to the weighted sum of their updates" in res.output
        got = _merged_deltas(tmp_path / method)
        for m in want:
            torch.testing.assert_close(got[m], want[m], atol=1e-6, rtol=0)


def test_cat_and_ties_equal_peft_add_weighted_adapter(setup, tmp_path):
    _, base, paths = setup
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(paths[0]), adapter_name="a0")
    pm.load_adapter(str(paths[1]), adapter_name="a1")
    pm.load_adapter(str(paths[2]), adapter_name="a2")
    names = ["a0", "a1", "a2"]
    pm.add_weighted_adapter(names, [1.0, 1.0, 1.0], "cat", combination_type="cat")
    pm.add_weighted_adapter(names, [1.0, 1.0, 1.0], "ties", combination_type="ties_svd", density=0.5, svd_rank=16)
    for method, extra in (("cat", []), ("ties", ["--rank", 16, "--density", 0.5])):
        res = _merge("--method", method, *paths, *extra, "--out", tmp_path / method)
        assert res.exit_code == 0, res.output
        ours = _merged_deltas(tmp_path / method)
        for n, mod in pm.named_modules():
            if hasattr(mod, "get_delta_weight") and method in getattr(mod, "lora_A", {}):
                torch.testing.assert_close(ours[n.removeprefix("base_model.model.")],
                                           mod.get_delta_weight(method).double(), atol=1e-5, rtol=0)


def test_lego_at_one_input_rank_is_closer_than_no_merge(setup):
    """k = 4 clusters of 9 units: a real clustering (several members per centroid), with finite factors."""
    _, _, paths = setup
    loras = [read_lora(p) for p in paths]
    out = lego.merge(loras, 4)
    for m, (b, a) in out.items():
        assert b.shape[1] == a.shape[0] == 4 and torch.isfinite(b).all() and torch.isfinite(a).all()
        u = lego.canonical(lego.units(loras, m).numpy(), True)  # (n, O + I)
        _, labels = lego.cluster(u, 4, lego.LegoConfig(), n_out=b.shape[0])
        assert len(set(labels.tolist())) == 4


def test_bad_input_one_line(setup, tmp_path):
    root, base, paths = setup
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "adaptome.json").write_text("{}")
    (tmp_path / "taken").mkdir()
    cases = [
        (["--method", "nope", *paths, "--rank", 2, "--out", tmp_path / "x"], "unknown merge method 'nope'"),
        (["--method", "lego", *paths, "--out", tmp_path / "x"], "lego needs a positive --rank"),
        (["--method", "cat", *paths, "--rank", 3, "--out", tmp_path / "x"], "cat's rank is the sum"),
        (["--method", "linear", *paths, "--rank", 3, "--weights", "1,2", "--out", tmp_path / "x"], "2 weights for 3"),
        (["--method", "lego", *paths, "--rank", 3, "--density", 0.5, "--out", tmp_path / "x"],
         "lego does not take ['density']"),
        (["--method", "lego", paths[0], tmp_path / "native", "--rank", 3, "--out", tmp_path / "x"],
         "export it first: adaptome adapters export --to peft-lora"),
        (["--method", "lego", *paths, "--rank", 3, "--out", tmp_path / "taken"], "already exists"),
    ]
    for args, msg in cases:
        res = _merge(*args)
        assert res.exit_code == 2, (args, res.output)
        assert res.output.startswith("error: ") and msg in res.output, res.output
        assert not (tmp_path / "x").exists()
    # a LoRA of another base model (other hidden size) is refused by shape
    other = tmp_path / "other"
    other.mkdir()
    state = {k: torch.zeros(v.shape[0] + (1 if ".lora_B." in k else 0), v.shape[1])
             for k, v in load_file(str(paths[0] / "adapter_model.safetensors")).items()}
    save_file(state, str(other / "adapter_model.safetensors"))
    (other / "adapter_config.json").write_text((paths[0] / "adapter_config.json").read_text())
    res = _merge("--method", "linear", paths[0], other, "--rank", 2, "--out", tmp_path / "x")
    assert res.exit_code == 2 and "different base models?" in res.output, res.output


def test_cli_lego_options_reach_the_config_and_bad_ones_are_named(setup, tmp_path):
    _, _, paths = setup
    loras = [read_lora(p) for p in paths]
    for basis, cluster_on, centroid in (("svd", "units", "factors"), ("raw", "directions", "update"),
                                        ("raw", "updates", "update")):
        res = _merge("--method", "lego", *paths, "--rank", 3, "--basis", basis, "--cluster-on", cluster_on,
                     "--centroid", centroid, "--out", tmp_path / f"{basis}-{cluster_on}-{centroid}")
        assert res.exit_code == 0, res.output
        want = lego.LegoConfig(basis=basis, cluster_on=cluster_on, centroid=centroid).merge(loras, 3)
        other = (lego.LegoConfig(cluster_on="directions", centroid="update") if cluster_on == "updates" else
                 lego.LegoConfig(basis=basis, cluster_on=cluster_on,
                                 centroid="factors" if centroid == "update" else "update")).merge(loras, 3)
        got = read_lora(tmp_path / f"{basis}-{cluster_on}-{centroid}").factors
        for m in want:
            torch.testing.assert_close(got[m][0] @ got[m][1], want[m][0] @ want[m][1], atol=1e-6, rtol=0)
        assert any(not torch.allclose(got[m][0] @ got[m][1], other[m][0] @ other[m][1], atol=1e-4) for m in want)
    res = _merge("--method", "lego", *paths, "--rank", 3, "--cluster-on", "updates", "--out", tmp_path / "bad")
    assert res.exit_code == 2 and "needs centroid='update'" in res.output and not (tmp_path / "bad").exists()
    res = _merge("--method", "lego", *paths, "--rank", 3, "--basis", "qr", "--out", tmp_path / "bad")
    assert res.exit_code == 2 and "basis must be 'raw' or 'svd'" in res.output and not (tmp_path / "bad").exists()
    res = _merge("--method", "linear", *paths, "--rank", 3, "--basis", "svd", "--out", tmp_path / "bad")
    assert res.exit_code == 2 and "linear does not take ['basis']" in res.output


def _with_base(src, dst, base_name):
    """A copy of the LoRA folder ``src`` whose config names ``base_name`` as its base model."""
    dst.mkdir()
    (dst / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": base_name}))
    return dst


def test_loras_naming_different_base_models_are_refused_unless_allowed(setup, tmp_path):
    _, _, paths = setup
    a = _with_base(paths[0], tmp_path / "a", "org/model-a")
    b = _with_base(paths[1], tmp_path / "b", "org/model-b")
    res = _merge("--method", "linear", a, b, "--rank", 2, "--out", tmp_path / "x")
    assert res.exit_code == 2 and "trained on base model 'org/model-b'" in res.output and "'org/model-a'" in res.output
    assert "--allow-different-bases" in res.output and not (tmp_path / "x").exists()
    res = _merge("--method", "linear", a, b, "--rank", 2, "--allow-different-bases", "--out", tmp_path / "x")
    assert res.exit_code == 0, res.output
    # the override merges exactly what the originals (one base) merge to
    res = _merge("--method", "linear", paths[0], paths[1], "--rank", 2, "--out", tmp_path / "orig")
    assert res.exit_code == 0, res.output
    got, want = _merged_deltas(tmp_path / "x"), _merged_deltas(tmp_path / "orig")
    assert got.keys() == want.keys()
    for m in want:
        torch.testing.assert_close(got[m], want[m], atol=0, rtol=0)
    # one local base folder under two spellings (a symlink, a '..' detour) is the same base
    (tmp_path / "base").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "base")
    c = _with_base(paths[0], tmp_path / "c", str(tmp_path / "link"))
    d = _with_base(paths[1], tmp_path / "d", str(tmp_path / "c" / ".." / "base"))
    res = _merge("--method", "linear", c, d, "--rank", 2, "--out", tmp_path / "y")
    assert res.exit_code == 0, res.output
    # an input that names no base is not compared
    e = _with_base(paths[2], tmp_path / "e", "")
    res = _merge("--method", "linear", a, e, "--rank", 2, "--out", tmp_path / "z")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("method,option,value", [("dare", "--variant", "foo"), ("dare", "--density", "0"),
                                                 ("ties", "--density", "0"), ("ties", "--density", "-1"),
                                                 ("ties", "--density", "1.5")])
def test_merge_options_outside_their_range_are_refused(setup, tmp_path, method, option, value):
    """Before: --variant foo silently ran DARE-TIES, density 0 gave a traceback (DARE) or an all-zero LoRA (TIES),
    -1 peft's traceback, 1.5 no pruning."""
    _, _, paths = setup
    res = _merge("--method", method, paths[0], paths[1], "--rank", 2, option, value, "--out", tmp_path / "x")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert ("must be in (0, 1]" if option == "--density" else "variant must be 'linear' or 'ties'") in res.output
    assert not (tmp_path / "x").exists()
