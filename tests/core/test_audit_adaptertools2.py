"""Audit (adaptertools2) regressions: ``adaptome adapters merge`` on LoRAs whose init rewrote the base
weights (PiSSA), and ``adaptome select-data`` on bases that are not causal LMs or whose attention
modules are not LLaMA-named, plus its report of cut and repeated pool texts."""

from __future__ import annotations

import copy
import json

import peft
import tiny_models as tiny
import torch
from typer.testing import CliRunner

from adaptome.core import cli, text

runner = CliRunner()


def _peft_lora(base, folder, init):
    torch.manual_seed(0)
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                   init_lora_weights=init))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.3)
    pm.save_pretrained(folder)
    return folder


def test_merge_refuses_a_lora_whose_init_rewrote_the_base_weights(tmp_path):
    """A PiSSA LoRA saved unconverted is trained on W - B0 A0; its B A alone is not its update, so merging it as
    a plain LoRA was silently wrong (about 10 % of the effect on the logits of a tiny LLaMA)."""
    base = tiny.llama()
    plain = _peft_lora(base, tmp_path / "plain", True)
    pissa = _peft_lora(base, tmp_path / "pissa", "pissa")
    res = runner.invoke(cli.app, ["adapters", "merge", "--method", "cat", str(plain), str(pissa),
                                  "--out", str(tmp_path / "m")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and "init_lora_weights is 'pissa'" in res.output, res.output
    assert "path_initial_model_for_weight_conversion" in res.output
    assert not (tmp_path / "m").exists()


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _select(tmp_path, model_dir, pool, *extra):
    target = _jsonl(tmp_path / "target.jsonl", [{"text": "0101"}])  # a target file of one example
    args = ["select-data", "--model", model_dir, "--train", pool, "--target", target, "--out", tmp_path / "sel.jsonl",
            "--percentage", 0.25, "--warmup-fraction", 0.5, "--epochs", 1, "--lr", 0.01, "--batch-size", 4,
            "--lora-r", 2, "--lora-alpha", 4, "--proj-dim", 32, *extra]
    return runner.invoke(cli.app, [str(a) for a in args])


def test_select_data_refuses_a_masked_lm_base(tmp_path):
    """transformers loads a BertForMaskedLM folder as a BertLMHeadModel that still attends both ways; its
    next-token gradients would be meaningless, so the base is refused before any warm-up."""
    tok = text.char_tokenizer()
    model = tiny.text_masked_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    model.save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    pool = _jsonl(tmp_path / "pool.jsonl", [{"text": f"ab{i}c01"} for i in range(8)])
    res = _select(tmp_path, tmp_path / "mlm", pool)
    assert res.exit_code == 2, res.output
    assert "is not a causal LM" in res.output and str(tmp_path / "mlm") in res.output, res.output
    assert not (tmp_path / "sel.jsonl").exists() and not (tmp_path / "sel.jsonl.less-work").exists()


def test_select_data_on_phi3_keeps_fields_and_counts_cut_and_repeated_texts(tmp_path):
    """The warm-up LoRA's ``attention`` targets follow the architecture (Phi-3's fused qkv_proj; before, the
    LLaMA names were hard-coded and a Phi-3 base was refused with no option to change them); the summary
    says how many texts were cut to --max-length and how many pool texts repeat an earlier one."""
    tok = text.char_tokenizer()
    model = tiny.phi3(vocab_size=len(tok), num_layers=1, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model.save_pretrained(tmp_path / "phi3")
    tok.save_pretrained(tmp_path / "phi3")
    records = [{"text": "ab01" * (1 + i % 3), "id": i, "meta": {"src": "x"}} for i in range(7)]
    records.append({"text": "0123456789" * 3, "id": 7, "meta": {"src": "long"}})  # > 16 tokens
    pool = _jsonl(tmp_path / "pool.jsonl", records)
    res = _select(tmp_path, tmp_path / "phi3", pool, "--max-length", 16)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["selected"] == 2 and summary["targets"] == 1
    assert summary["cut_to_max_length"] == {"pool": 1, "targets": 0}
    assert summary["repeated_pool_texts"] == 4  # 7 texts of 3 kinds
    rows = [json.loads(line) for line in (tmp_path / "sel.jsonl").read_text().splitlines()]
    for row in rows:
        assert {k: v for k, v in row.items() if k != "less_score"} == records[row["id"]]
