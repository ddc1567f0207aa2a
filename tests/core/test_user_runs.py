"""The core as a user meets it: ``adaptome train`` / ``adapters export`` on files and models of their own.

Each test here failed on the code before its fix: a resume past ``max_steps`` passed a longer run's adapter
off as the configured one; ``seq_bn`` ignored ``target_modules`` / ``exclude_modules``; an adapter loaded onto
another base (NOLA even onto another width); a JSONL file with a byte-order mark was refused and a text file's
mark became part of its first example; a misspelt adapter option was reported without its file, after the
model was loaded; a GPT-2 model's Conv1D layers were not named when no target matched.
"""

import json
import shutil

import pytest
import tiny_models
import tiny_models as tiny
import torch
import yaml
from typer.testing import CliRunner

from adaptome.core import text
from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.adapters.io import CheckpointError, load_adapter, save_adapter

runner = CliRunner()
TINY = tiny_models.TINY_TRAIN_MODEL


def _lines(n=24):
    import random

    rng = random.Random(0)
    return ["".join(rng.choice("abcdefghij") for _ in range(40)) for _ in range(n)]


def _config(tmp_path, train_file, kind="causal", adapter=None, **train) -> str:
    cfg = {
        "model": {"kind": kind, "tiny": TINY},
        "data": {"train_files": [str(train_file)], "block_size": 32},
        "adapter": adapter or {"method": "lora_native", "options": {"r": 2}},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 4, "lr": 0.01,
                  "progress": False, "log_every": 1, **train},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _text_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(_lines()) + "\n")
    return path


def test_resume_past_max_steps_is_refused_and_keeps_the_adapter(app, tmp_path):
    """A folder trained to step 4, resumed with max_steps 2: before, the step-4 weights were written as the
    adapter of a run whose config.yaml says 2 steps. Now refused; --overwrite starts again and trains 2 steps."""
    cfg = _config(tmp_path, _text_file(tmp_path), save_every=2)
    assert runner.invoke(app, ["train", "-c", cfg]).exit_code == 0
    adapter = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    before = adapter.read_bytes()
    kept = tmp_path / "kept.safetensors"
    shutil.move(adapter, kept)  # the folder of a run stopped after its step-4 checkpoint
    shutil.rmtree(tmp_path / "run" / "adapter")
    shutil.rmtree(tmp_path / "run" / "merged", ignore_errors=True)
    res = runner.invoke(app, ["train", "-c", cfg, "--set", "train.max_steps=2"])
    assert res.exit_code == 2, res.output
    assert "step-4: is step 4, beyond max_steps 2" in res.output
    assert not adapter.exists()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_steps"] == 4
    res = runner.invoke(app, ["train", "-c", cfg, "--set", "train.max_steps=2", "--overwrite"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["resumed_from"] is None
    assert adapter.read_bytes() != before
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_steps"] == 2


def test_seq_bn_trains_only_the_blocks_its_options_select(app, tmp_path):
    """``exclude_modules`` / ``target_modules`` choose FFN blocks; before, both were ignored (every block)."""
    opts = {"reduction_factor": 4, "init_weights": "mam", "exclude_modules": ["layer.1.output"]}
    cfg = _config(tmp_path, _text_file(tmp_path), kind="masked", adapter={"method": "seq_bn", "options": opts},
                  save_every=0)
    res = runner.invoke(app, ["train", "-c", cfg])
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert keys and all(".layer.0.output." in k for k in keys), sorted(keys)
    # d = 32, m = 8: one block's 2*d*m + m + d parameters (the base has two blocks)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["trainable"] == 2 * 32 * 8 + 8 + 32

    res = runner.invoke(app, ["train", "-c", cfg, "--overwrite", "--set", "adapter.options.target_modules=attention"])
    assert res.exit_code == 2 and "target_modules 'attention' matched no FFN block" in res.output, res.output
    model = tiny.bert()
    only = apply_adapter(model, make_config("seq_bn", {"target_modules": ["layer.1.output"], "reduction_factor": 4}))
    wrapped = [p for p, m in only.named_modules() if type(m).__name__ == "BottleneckLayer"]
    assert wrapped == ["bert.encoder.layer.1.output"]


@pytest.mark.parametrize("method, options", [
    ("lora", {"r": 2, "init_lora_weights": False}),
    ("lora_native", {"r": 2, "init_lora_weights": "random_b"}),
    ("nola", {"r": 2, "num_basis_a": 4, "num_basis_b": 4, "init_coefficients": "random"}),
])
def test_adapter_loads_on_its_base_only(tmp_path, method, options):
    """Same base (also in bf16): identical outputs. Other weights or another width: refused, the model left
    as it was. Before, both loaded; NOLA (seed + coefficients only) even onto a wider model."""
    trained = apply_adapter(tiny.llama(seed=0), make_config(method, options)).eval()
    save_adapter(trained, tmp_path / "a")
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        got = load_adapter(tiny.llama(seed=0), tmp_path / "a").eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    load_adapter(tiny.llama(seed=0).to(torch.bfloat16), tmp_path / "a")  # the same weights, rounded

    for other in (tiny.llama(seed=1), tiny.llama(seed=0, hidden_size=48)):
        clean = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(CheckpointError, match="was trained on another base model"):
            load_adapter(other, tmp_path / "a")
        assert other.state_dict().keys() == clean.keys()
        assert all(torch.equal(other.state_dict()[k], v) for k, v in clean.items())
    assert load_adapter(tiny.llama(seed=1), tmp_path / "a", check_base=False) is not None  # on purpose


def test_export_onto_another_base_is_refused(app, tmp_path):
    """``adapters export --base`` of another model: one line naming the layer, no output."""
    save_adapter(apply_adapter(tiny.llama(seed=0), make_config("lora_native", {"r": 2})), tmp_path / "a")
    tiny.llama(seed=3).save_pretrained(tmp_path / "other")
    res = runner.invoke(app, ["adapters", "export", str(tmp_path / "a"), str(tmp_path / "peft"),
                              "--base", str(tmp_path / "other")])
    assert res.exit_code == 2 and "was trained on another base model" in res.output, res.output
    assert not (tmp_path / "peft").exists()


def test_byte_order_mark_and_windows_line_endings_read_as_plain_text(app, tmp_path):
    lines = _lines()
    body = "\r\n".join(json.dumps({"text": t}) for t in lines[:12]) + "\r\n\r\n" + \
        "\r\n".join(json.dumps({"text": t}) for t in lines[12:]) + "\r\n"
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + body.encode())
    txt = tmp_path / "bom.txt"
    txt.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    assert text.read_texts(jsonl) == lines and text.read_texts(txt) == lines
    res = runner.invoke(app, ["train", "-c", _config(tmp_path, jsonl, save_every=0, max_steps=2)])
    assert res.exit_code == 0, res.output


def test_misspelt_adapter_option_names_file_and_key_before_loading(app, tmp_path):
    """The model path does not exist: the option error comes first, naming the YAML file and the key."""
    cfg = _config(tmp_path, _text_file(tmp_path), adapter={"method": "lora", "options": {"lora_alph": 8}})
    res = runner.invoke(app, ["train", "-c", cfg, "--set", f"model.name_or_path={tmp_path / 'no-model'}"])
    assert res.exit_code == 2, res.output
    assert f"{cfg}: unknown key 'adapter.options.lora_alph'" in res.output
    res = runner.invoke(app, ["train", "-c", cfg, "--set", "adapter.method=sltrian"])
    assert res.exit_code == 2 and "adapter.method: unknown adapter method 'sltrian'" in res.output
    assert "from scratch: sltrain" in res.output


def test_gpt2_conv1d_layers_are_named_when_nothing_matches():
    from transformers import GPT2Config, GPT2LMHeadModel

    from adaptome.core.adapters.targets import TargetError, resolve_targets

    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(TargetError, match=r"transformer\.h\.0\.attn\.c_attn.*Conv1D"):
        resolve_targets(model, "all-linear")


def test_summary_reports_base_and_unigram_perplexity_recomputed_by_hand(app, tmp_path):
    """The summary's baselines on the held-out file, recomputed here: the tiny base rebuilt from its seed
    scored block by block, and add-one unigram counts of the training tokens."""
    import math
    from collections import Counter

    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    train.write_text("\n".join(_lines(24)) + "\n")
    held.write_text("\n".join(_lines(40)[24:]) + "\n")
    cfg = _config(tmp_path, train, save_every=0, max_steps=2)
    res = runner.invoke(app, ["train", "-c", cfg, "--set", f"data.eval_files=[{held}]"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    tok = text.char_tokenizer()
    blocks = {name: text.pack_blocks([tok(t, add_special_tokens=False)["input_ids"] for t in text.read_texts(f)], 32,
                                     tok.eos_token_id) for name, f in (("train", train), ("held", held))}
    counts = Counter(i for b in blocks["train"] for i in b)
    n, vocab = sum(counts.values()), len(tok)
    scored = [i for b in blocks["held"] for i in b[1:]]  # position t predicts t+1: the first is never scored
    unigram = math.exp(-sum(math.log((counts[i] + 1) / (n + vocab)) for i in scored) / len(scored))
    assert summary["eval/perplexity_unigram"] == pytest.approx(unigram, rel=1e-9)

    base = tiny.text_causal_lm(vocab, **TINY).eval()  # the run seeds its tiny model with train.seed (0)
    with torch.no_grad():
        nll = [base(input_ids=torch.tensor([b]), labels=torch.tensor([b])).loss.item() for b in blocks["held"]]
    assert summary["eval/perplexity_base"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    assert summary["eval/perplexity_unigram"] < 12 < summary["eval/perplexity_base"]  # 10 letters vs an untrained LM


def test_masked_lm_evaluations_score_the_same_masked_tokens(app, tmp_path):
    """At a negligible learning rate every evaluation of a masked LM gives the base's number: the masks are
    drawn from ``train.seed`` each time. Before, each evaluation drew other masks (and no baseline existed)."""
    f = _text_file(tmp_path)
    cfg = _config(tmp_path, f, kind="masked", save_every=0, max_steps=3, lr=1e-12, eval_every=1)
    res = runner.invoke(app, ["train", "-c", cfg, "--set", f"data.eval_files=[{f}]"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/perplexity"] for r in records if "eval/perplexity" in r]
    base = json.loads((tmp_path / "run" / "summary.json").read_text())["eval/perplexity_base"]
    assert len(evals) == 3 and all(v == pytest.approx(base, rel=1e-6) for v in evals), (evals, base)


def test_block_size_beyond_the_models_positions_is_one_line(app, tmp_path):
    """The tiny BERT has 512 positions; before, block_size 600 failed inside the forward pass with a shape
    error traceback."""
    long = tmp_path / "long.txt"
    long.write_text("\n".join(line * 20 for line in _lines(8)) + "\n")
    cfg = _config(tmp_path, long, kind="masked", save_every=0, max_steps=1)
    res = runner.invoke(app, ["train", "-c", cfg, "--set", "data.block_size=600"])
    assert res.exit_code == 2, res.output
    assert f"{cfg}: data.block_size: 600 tokens is more than the model's 512 positions" in res.output
    assert not (tmp_path / "run").exists()


def test_compress_a_gpt2_names_its_conv1d_layers(app, tmp_path):
    """Before, ``compress`` called GPT2LMHeadModel 'neither a causal nor a masked LM'."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=len(text.char_tokenizer()), n_embd=16, n_layer=1, n_head=2,
                               n_positions=64)).save_pretrained(tmp_path / "gpt2")
    text.char_tokenizer().save_pretrained(tmp_path / "gpt2")
    res = runner.invoke(app, ["compress", "--method", "lrt", "--model", str(tmp_path / "gpt2"), "--budget", "0.5",
                              "--out", str(tmp_path / "out"), "--eval-text", str(_text_file(tmp_path)),
                              "--block-size", "32"])
    assert res.exit_code == 2, res.output
    assert "neither a causal" not in res.output and "Conv1D" in res.output and "c_attn" in res.output


def test_model_folder_replaced_by_another_checkpoint_is_not_resumed(app, tmp_path):
    """The same path, config and shapes, other weights: before, the run resumed its adapter on them.
    The adapter also records its base, so ``adapters export`` needs no --base."""
    vocab = len(text.char_tokenizer())
    sizes = dict(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model_dir = tmp_path / "my-model"
    tiny.llama(seed=0, **sizes).save_pretrained(model_dir)
    text.char_tokenizer().save_pretrained(model_dir)
    cfg = _config(tmp_path, _text_file(tmp_path), save_every=2, max_steps=2)
    args = ["train", "-c", cfg, "--set", f"model.name_or_path={model_dir}"]
    assert runner.invoke(app, args).exit_code == 0

    res = runner.invoke(app, ["adapters", "export", str(tmp_path / "run" / "adapter"), str(tmp_path / "peft")])
    assert res.exit_code == 0, res.output

    tiny.llama(seed=1, **sizes).save_pretrained(model_dir)  # another checkpoint at the same path
    shutil.rmtree(tmp_path / "run" / "adapter")  # as an interrupted run leaves the folder
    shutil.rmtree(tmp_path / "run" / "merged")
    res = runner.invoke(app, args + ["--set", "train.max_steps=4"])
    assert res.exit_code == 2 and "another configuration (base_weights:" in res.output, res.output
    res = runner.invoke(app, args + ["--set", "train.max_steps=4", "--overwrite"])  # starts again, not resumed
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == 4


def test_an_existing_merged_folder_is_refused_before_training(app, tmp_path):
    """adapter/ removed, merged/ kept: before, the run trained to the end and then failed on merged/."""
    import shutil

    cfg = _config(tmp_path, _text_file(tmp_path), save_every=0, max_steps=2)
    assert runner.invoke(app, ["train", "-c", cfg]).exit_code == 0
    shutil.rmtree(tmp_path / "run" / "adapter")
    log = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    res = runner.invoke(app, ["train", "-c", cfg])
    assert res.exit_code == 2 and "merged: already exists; use --overwrite" in res.output, res.output
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == log  # nothing trained, nothing rewritten


def test_a_model_without_the_configured_head_is_one_line(app, tmp_path):
    """A T5 (encoder-decoder) or a BERT whose tokenizer has no EOS, trained as a causal LM, and a model path
    that does not exist: before, transformers' traceback (listing every architecture) or a dtype error."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = text.char_tokenizer()
    T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                        d_kv=8, decoder_start_token_id=0)).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    tiny.bert(vocab_size=len(tok)).save_pretrained(tmp_path / "bert")
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, pad_token="<pad>", mask_token="<mask>",
                            unk_token="<unk>").save_pretrained(tmp_path / "bert")  # no EOS, as BERT's own
    cfg = _config(tmp_path, _text_file(tmp_path), save_every=0, max_steps=1)
    for model, expect in ((tmp_path / "t5", "a 't5' model has no causal LM head"),
                          (tmp_path / "bert", "the tokenizer has no eos_token"),
                          (tmp_path / "nowhere", "model.name_or_path: no such model folder")):
        res = runner.invoke(app, ["train", "-c", cfg, "--set", f"model.name_or_path={model}"])
        assert res.exit_code == 2 and f"{model}: {expect}" in res.output, res.output
        assert "Traceback" not in res.output


def test_text_the_tokenizer_cannot_read_is_refused_naming_the_file(app, tmp_path):
    """Georgian text through the built-in character tokenizer (printable ASCII): before, every letter became
    <unk> and the run trained on the spaces alone, reporting perplexities as if it had read the text."""
    georgian = tmp_path / "ka.txt"
    georgian.write_text("\n".join(["გამარჯობა როგორ ხარ", "დღეს კარგი ამინდია"] * 10) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, georgian)])
    assert r.exit_code != 0
    assert "ka.txt: 89% of its tokens are <unk>" in r.output and "model.name_or_path" in r.output
    assert not (tmp_path / "run" / "adapter").exists()
    # a few accented letters in ASCII text stay below the limit (5 %) and train
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("\n".join(line[:38] + "é" for line in _lines()) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, mixed)])
    assert r.exit_code == 0, r.output


def test_overwrite_with_a_run_that_merges_nothing_removes_the_earlier_merged_model(app, tmp_path):
    """A LoRA run writes merged/; rerun with --overwrite and save_merged false: before, the first run's merged/
    stayed beside the second run's adapter, a model of another run in its folder."""
    path = _config(tmp_path, _text_file(tmp_path))
    assert runner.invoke(app, ["train", "-c", path]).exit_code == 0
    assert (tmp_path / "run" / "merged" / "config.json").exists()
    r = runner.invoke(app, ["train", "-c", path, "--set", "save_merged=false", "--set", "train.max_steps=2"])
    assert r.exit_code != 0 and "already exists" in r.output  # without --overwrite both folders are refused
    r = runner.invoke(app, ["train", "-c", path, "--set", "save_merged=false", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "merged").exists()


def test_eval_every_without_eval_files_is_refused(app, tmp_path):
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, _text_file(tmp_path), eval_every=2)])
    assert r.exit_code != 0 and "train.eval_every 2: data.eval_files is empty" in r.output
    assert not (tmp_path / "run").exists()


def test_sora_gates_keep_their_optimizer_group_through_adaptome_train(app, tmp_path):
    """SoRA's gates train at gate_lr without weight decay (its optimizer group): with gate_lr 0 and no sparsity
    they must not move, however large the run's weight decay. Before, adaptome train built one AdamW group over
    every parameter (the optimizer registry ignored the methods' groups), and the gates decayed at the run's lr."""
    from safetensors.torch import load_file

    adapter = {"method": "sora", "options": {"r": 4, "sparse_lambda": 0.0, "gate_lr": 0.0, "gate_init": "ones"}}
    path = _config(tmp_path, _text_file(tmp_path), adapter=adapter, weight_decay=0.5, max_steps=6)
    r = runner.invoke(app, ["train", "-c", path])
    assert r.exit_code == 0, r.output
    weights = load_file(str(next((tmp_path / "run" / "adapter").glob("*.safetensors"))))
    gates = [v for k, v in weights.items() if "sora_gate" in k]
    assert gates and all(torch.equal(g, torch.ones_like(g)) for g in gates)
    others = [v for k, v in weights.items() if "lora_B" in k or k.endswith("B")]
    assert any(v.abs().sum() > 0 for v in others)  # the rest trained


def test_registry_optimizers_keep_the_methods_groups():
    """Both registered optimizers build from the groups ``fit`` passes: a group's own options (SoRA's gate lr 0,
    no weight decay) survive; GaLore projects its target weights and keeps the others' group options."""
    from adaptome.core.optim.registry import make_optimizer_factory

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    gate = torch.nn.Parameter(torch.ones(4))
    model.register_parameter("gate", gate)
    rest = [p for n, p in model.named_parameters() if n != "gate"]
    groups = [{"params": rest, "weight_decay": 0.5}, {"params": [gate], "lr": 0.0, "weight_decay": 0.0}]
    for name, options in (("adamw", {}), ("galore", {"rank": 2, "target_modules": ["0"]})):
        opt = make_optimizer_factory(name, options, 1e-2, 0.5, (0.9, 0.999))(model, groups=groups)
        [g] = [g for g in opt.param_groups if any(p is gate for p in g["params"])]
        assert g["lr"] == 0.0 and g["weight_decay"] == 0.0, name
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert [len(g["params"]) for g in opt.param_groups if g["galore"]] == [1]  # model[0].weight, projected


def test_a_local_base_is_recorded_by_its_absolute_path_and_export_finds_it_from_elsewhere(app, tmp_path,
                                                                                         monkeypatch):
    """Before, a run from another folder recorded the relative base 'base', and `adapters export` from elsewhere
    went to the hub with a message naming neither the adapter nor the base."""
    tok = text.char_tokenizer()
    tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    path = _config(tmp_path, _text_file(tmp_path))
    cfg = yaml.safe_load(open(path))
    cfg["model"] = {"name_or_path": "base", "kind": "causal"}
    cfg["data"]["block_size"] = 16
    open(path, "w").write(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["train", "-c", path]).exit_code == 0
    meta = json.loads((tmp_path / "run" / "adapter" / "adaptome.json").read_text())
    assert meta["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    monkeypatch.chdir("/")
    res = runner.invoke(app, ["adapters", "export", str(tmp_path / "run" / "adapter"), str(tmp_path / "peft")])
    assert res.exit_code == 0, res.output
    # an adapter that records a base this machine cannot load: one line naming the adapter and the base
    meta["base_model_name_or_path"] = str(tmp_path / "moved-base")
    (tmp_path / "run" / "adapter" / "adaptome.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["adapters", "export", str(tmp_path / "run" / "adapter"), str(tmp_path / "p2")])
    assert res.exit_code == 2 and f"its base model folder {tmp_path / 'moved-base'} does not exist" in res.output
    assert "--base" in res.output and not (tmp_path / "p2").exists()


def test_a_peft_backed_adapter_without_its_config_is_an_incomplete_folder(app, tmp_path):
    save_adapter(apply_adapter(tiny.llama(seed=0), make_config("lora", {"r": 2})), tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete adapter folder, adapter_config.json is missing"):
        load_adapter(tiny.llama(seed=0), tmp_path / "a")


def test_optimizer_and_compress_options_name_their_key(app, tmp_path):
    """GaLore's targets after SLTrain replaced the linears: the message names optimizer.options.target_modules
    (it named target_modules alone, read as the adapter's). DSFormer nnz_per_column 0: 'must be >= 1' (it said
    the dictionary had fewer atoms than k and to raise the budget)."""
    adapter = {"method": "sltrain", "options": {"rank": 4, "lora_alpha": 8, "delta": 0.03}}
    path = _config(tmp_path, _text_file(tmp_path), adapter=adapter)
    r = runner.invoke(app, ["train", "-c", path, "--set", 'optimizer={"name": "galore", "options": {"rank": 2}}'])
    assert r.exit_code != 0 and "optimizer.options.target_modules (galore)" in r.output, r.output
    tiny.llama(seed=0).save_pretrained(tmp_path / "base")
    r = runner.invoke(app, ["compress", "--method", "dsformer", "--model", str(tmp_path / "base"), "--budget", "0.5",
                            "--set", "nnz_per_column=0", "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "nnz_per_column must be >= 1" in r.output, r.output
    assert not (tmp_path / "c").exists()
