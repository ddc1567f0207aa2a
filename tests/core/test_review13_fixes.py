"""Review (session 13) regressions in core, each through the entry point a user calls; each failed before its fix:

* ``adapters merge`` refused two LoRAs of one base folder when one was trained on it loaded in float32 and the other
  in bfloat16 / float16 (the recorded digest hashed the dtype and the exact values);
* DSFormer's report counted ceil(log2 r)-bit indices while the file held int32 ones (at --budget 0.9 the saved
  matrices were dense-sized, the report said 28.6 bits per parameter);
* SLTrain's too-many-parameters warning suggested "rank at most -1" when delta alone filled the layer.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import tiny_models as tiny
import torch
from typer.testing import CliRunner

from adaptome.core import cli

runner = CliRunner()


def _base_folder(folder, seed):
    from adaptome.core import text

    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # another checkpoint of the same architecture
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _train_lora_cli(tmp_path, base, name):
    """A LoRA trained by ``adaptome train`` (the base loaded as saved, float32)."""
    import yaml

    (tmp_path / "lines.txt").write_text("\n".join(["the cat sat on the mat and looked at the dog"] * 12) + "\n")
    cfg = {"model": {"kind": "causal", "name_or_path": str(base)},
           "data": {"train_files": [str(tmp_path / "lines.txt")], "block_size": 16},
           "adapter": {"method": "lora", "options": {"r": 2, "target_modules": ["q_proj"]}},
           "train": {"output_dir": str(tmp_path / name), "max_steps": 1, "batch_size": 2, "lr": 0.01,
                     "progress": False, "threads": 1}, "save_merged": False}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(cli.app, ["train", "-c", str(tmp_path / f"{name}.yaml")])
    assert res.exit_code == 0, res.output
    return tmp_path / name / "adapter"


def _lora_in_dtype(tmp_path, base, name, dtype):
    """A LoRA saved by the library on ``base`` loaded in ``dtype`` (a user's bf16 / fp16 run), B made non-zero."""
    from transformers import AutoModelForCausalLM

    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.adapters.io import save_adapter

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    model = apply_adapter(model, make_config("lora", {"r": 2, "target_modules": ["v_proj"]}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    return save_adapter(model, tmp_path / name)


def _merge(*folders, out):
    return runner.invoke(cli.app, ["adapters", "merge", "--method", "cat", *map(str, folders), "--out", str(out)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merge_passes_loras_of_one_base_loaded_in_float32_and_in_half(tmp_path, dtype):
    base = _base_folder(tmp_path / "base", seed=1)
    a = _train_lora_cli(tmp_path, base, "a")
    b = _lora_in_dtype(tmp_path, base, "b", dtype)
    res = _merge(a, b, out=tmp_path / "m")
    assert res.exit_code == 0, res.output  # before: "trained on different base weights"
    merged = json.loads((tmp_path / "m" / "adaptome_merge.json").read_text())
    assert merged["base_weights_sample"] == json.loads((a / "adaptome.json").read_text())["base_weights_sample"]
    # the merged folder can be merged again with the same check
    res = _merge(tmp_path / "m", b, out=tmp_path / "m2")
    assert res.exit_code == 0, res.output


def test_merge_refuses_loras_of_other_weights_under_one_name_whatever_the_dtype(tmp_path):
    base = _base_folder(tmp_path / "base", seed=1)
    a = _train_lora_cli(tmp_path, base, "a")
    shutil.rmtree(base)
    _base_folder(base, seed=2)  # trained again in place
    b = _lora_in_dtype(tmp_path, base, "b", torch.bfloat16)
    res = _merge(a, b, out=tmp_path / "m")
    assert res.exit_code == 2, res.output
    assert f"error: {b} and {a} were trained on different base weights" in res.output, res.output
    assert "the samples of base weights adaptome recorded when it saved them differ: values up to" in res.output
    assert not (tmp_path / "m").exists()
    # folders saved before the samples were recorded: their digests are compared exactly, as before
    for folder in (a, b):
        meta = json.loads((folder / "adaptome.json").read_text())
        del meta["base_weights_sample"]
        (folder / "adaptome.json").write_text(json.dumps(meta))
    res = _merge(a, b, out=tmp_path / "m")
    assert res.exit_code == 2 and "different base weights" in res.output, res.output


def test_merge_refuses_a_base_and_its_slightly_fine_tuned_child_in_one_dtype(tmp_path):
    """Review 3, finding 1: with value samples, only the bf16 rounding tolerance was applied, so a base and a copy
    whose every weight moved by 0.5 % (a short fine-tune, a merged stage-1 LoRA) merged silently. Bases loaded in one
    dtype are compared by their exact digests; the tolerance is for one base loaded in two dtypes."""
    from transformers import AutoModelForCausalLM

    base = _base_folder(tmp_path / "base", seed=1)
    a = _train_lora_cli(tmp_path, base, "a")
    child = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in child.parameters():
            p.mul_(1.005)  # every weight moved by 0.5 %, well inside the rounding tolerance
    shutil.rmtree(base)
    child.save_pretrained(base)
    b = _lora_in_dtype(tmp_path, base, "b", torch.float32)
    res = _merge(a, b, out=tmp_path / "m")
    assert res.exit_code == 2 and "different base weights" in res.output and "loaded in one dtype" in res.output, \
        res.output


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from adaptome.core import text

    root = tmp_path_factory.mktemp("lm")
    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return root / "tiny"


def _tensor_bytes(path) -> dict[str, int]:
    """{name: bytes} of every tensor in a safetensors file, read from its header."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


@pytest.mark.parametrize("budget", ["0.5", "0.9", "0.95"])
def test_dsformer_report_counts_what_the_file_stores(lm_dir, tmp_path, budget):
    out = tmp_path / "ds"
    res = runner.invoke(cli.app, ["compress", "--method", "dsformer", "--model", str(lm_dir), "--budget", budget,
                                  "--targets", "attention", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    stored = _tensor_bytes(out / "compressed_layers.safetensors")
    assert not any(k.endswith(".bias") for k in stored)
    assert sum(stored.values()) * 8 == report["totals"]["bits_after"]  # before: the file held more at every budget
    assert report["totals"]["bits_after"] < report["totals"]["bits_before"]
    for row in report["matrices"]:
        assert stored[row["path"] + ".S_index"] * 8 == row["extra_bits"]
    manifest = json.loads((out / "compression.json").read_text())
    assert all(m["meta"]["rank"] <= 256 for m in manifest["layers"].values())
    assert {stored[p + ".S_index"] // (4 * 32) for p in manifest["layers"]} == {1}  # uint8: k=4 x i=32 bytes


def test_dsformer_at_a_budget_whose_indices_reach_the_dense_size_is_refused_counting_the_stored_width(lm_dir,
                                                                                                     tmp_path):
    out = tmp_path / "ds"
    res = runner.invoke(cli.app, ["compress", "--method", "dsformer", "--model", str(lm_dir), "--budget", "0.97",
                                  "--targets", "attention", "--out", str(out)])
    assert res.exit_code == 2, res.output  # before: written, 143360 bits for 131072 dense, reported as smaller
    assert "with 8-bit (uint8) indices" in res.output and "below about 0.969" in res.output, res.output
    assert not out.exists()


def test_dsformer_outputs_are_identical_after_a_save_and_load(tmp_path):
    from adaptome.core.compress.dsformer import DSFormer, DSFormerConfig
    from adaptome.core.compress.io import load_compressed, write_compressed

    model = tiny.llama(seed=0, vocab_size=40).eval()
    DSFormer.compress(model, ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"],
                      DSFormerConfig(keep_fraction=0.6))
    x = torch.randint(3, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x).logits
    (tmp_path / "c").mkdir()
    write_compressed(model, tmp_path / "c", "dsformer", {"keep_fraction": 0.6})
    loaded = load_compressed(tmp_path / "c").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, before, rtol=0, atol=0)


@pytest.mark.parametrize("r, dtype", [(200, torch.uint8), (256, torch.uint8), (257, torch.int16),
                                      (40000, torch.int32)])
def test_dsformer_indices_use_the_smallest_width_and_load_back(r, dtype):
    from adaptome.core.compress.dsformer import DSLinear, _index_bits

    g = torch.Generator().manual_seed(0)
    latent = torch.randn(r, 3, generator=g)
    latent[r - 1] = 100.0  # the last atom is chosen in every column: the widest index
    layer = DSLinear(torch.randn(2, r, generator=g), latent, 2, None)
    t = layer.to_tensors()
    assert t["S_index"].dtype == dtype and _index_bits(r) == t["S_index"].element_size() * 8
    back = DSLinear.from_tensors(layer.meta(), t)
    assert torch.equal(back.sparse_s(), layer.sparse_s())


def test_sltrain_whose_delta_alone_fills_the_layer_says_lower_delta(tmp_path):
    import warnings

    import yaml

    (tmp_path / "lines.txt").write_text("\n".join(["the cat sat on the mat and looked at the dog"] * 12) + "\n")
    cfg = {"model": {"kind": "causal", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                "intermediate_size": 64}},
           "data": {"train_files": [str(tmp_path / "lines.txt")], "block_size": 32},
           "adapter": {"method": "sltrain", "options": {"rank": 1, "delta": 1.0, "target_modules": "attention"}},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 4, "lr": 0.01,
                     "progress": False, "threads": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = runner.invoke(cli.app, ["train", "-c", str(tmp_path / "run.yaml")])
    assert res.exit_code == 0, res.output
    msgs = [str(w.message) for w in seen if "sltrain rank" in str(w.message)]
    assert msgs, [str(w.message) for w in seen]
    assert "at most -1" not in msgs[0] and "at most 0" not in msgs[0]  # before: "lower ... rank (to at most -1 there)"
    assert "delta 1.0 alone gives the layer 1024 of its 1024 parameters; lower delta" in msgs[0], msgs[0]


def test_seeded_eval_batches_touch_the_cpu_generator_alone_and_restore_it(monkeypatch):
    """Review 2, finding 1: eval_batches seeded each batch with torch.manual_seed, which also reseeds the CUDA
    generators that fork_rng(devices=[]) does not restore: on a GPU, training dropout after an evaluation depended
    on the eval set. Now only the CPU generator is seeded, and it is restored after."""
    import torch

    from adaptome.core.evaluation import eval_batches

    torch.manual_seed(123)
    state = torch.get_rng_state()
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    draw = list(eval_batches(list(range(10)), lambda xs: torch.rand(len(xs)), batch_size=4, batch_seed=7))
    assert calls == []
    assert torch.equal(torch.get_rng_state(), state)
    again = list(eval_batches(list(range(10)), lambda xs: torch.rand(len(xs)), batch_size=4, batch_seed=7,
                              shard=(1, 2)))
    assert torch.equal(again[0], draw[1])  # batch 1 draws the same whichever shard collates it


def test_a_models_load_path_is_not_part_of_a_runs_identity(tmp_path):
    """Review 2, finding 2: protein loads a local model folder by its absolute path, which reached the resume
    check through the config's _name_or_path: a stopped stage 2 could not resume once the project folder moved.
    The path is left out; the weights sample (and the config's other keys) still identify the base."""
    import tiny_models

    from adaptome.core.train.config import TrainConfig
    from adaptome.core.train.identity import run_identity

    model = tiny_models.llama(seed=0, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"))
    model.config._name_or_path = "/old/place/s1/merged"
    before = run_identity(model, cfg, n_examples=4, world_size=1)
    model.config._name_or_path = "/new/place/s1/merged"
    assert run_identity(model, cfg, n_examples=4, world_size=1) == before
    model.config.rms_norm_eps = 1e-3
    assert run_identity(model, cfg, n_examples=4, world_size=1) != before


def test_fit_identity_tells_two_checkpoints_of_one_architecture_apart():
    """Review 3, finding 3: with _name_or_path out of the identity, a script's fit(resume=True) would resume a
    checkpoint made on another base of the same architecture (fit's identity held no weights). The frozen weights'
    sample is now part of it; trainable (adapter) weights are not, so an unseeded adapter init is no change."""
    import tiny_models
    import torch

    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.train.config import TrainConfig
    from adaptome.core.train.identity import run_identity

    sizes = dict(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    cfg = TrainConfig(output_dir="unused")

    def ident(seed, adapter_seed):
        model = tiny_models.llama(seed=seed, **sizes)
        torch.manual_seed(adapter_seed)
        model = apply_adapter(model, make_config("lora_native", {"r": 2, "init_lora_weights": "random_b"}))
        return run_identity(model, cfg, n_examples=4, world_size=1)

    assert ident(0, 1) == ident(0, 2)
    assert ident(0, 1) != ident(1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inter, budget", [(64, 0.6), (512, 0.9)])  # ranks below and above 256: uint8, int16
def test_a_compressed_model_saved_in_its_dtype_loads_and_gives_the_same_outputs(tmp_path, dtype, inter, budget):
    """Review 3, finding 2: load_compressed built the rest of a bfloat16 model in float32, and its forward pass
    failed ('expected m1 and m2 to have the same dtype'). The loaded model takes the saved dtype."""
    from safetensors.torch import load_file

    from adaptome.core.compress.dsformer import DSFormer, DSFormerConfig
    from adaptome.core.compress.io import load_compressed, write_compressed

    model = tiny.llama(seed=0, vocab_size=40, hidden_size=64, intermediate_size=inter).eval().to(dtype)
    targets = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    rows = DSFormer.compress(model, targets, DSFormerConfig(keep_fraction=budget))
    x = torch.randint(3, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x).logits
    write_compressed(model, tmp_path / "c", "dsformer", {"keep_fraction": budget})
    index_dtypes = {str(t.dtype) for n, t in load_file(str(tmp_path / "c" / "compressed_layers.safetensors")).items()
                    if n.endswith("S_index")}
    assert index_dtypes == ({"torch.uint8"} if max(r["rank"] for r in rows) <= 256 else
                            {"torch.uint8", "torch.int16"})
    loaded = load_compressed(tmp_path / "c")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    with torch.no_grad():
        after = loaded(x).logits
    assert torch.equal(after, before)
