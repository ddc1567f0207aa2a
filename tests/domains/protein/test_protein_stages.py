import pytest
import tiny_models
import torch

from adaptome.core.adapters.api import is_peft_model
from adaptome.core.text import InputError
from adaptome.domains.protein import data, formats, instruct, pretrain
from adaptome.domains.protein.model import LLAMA_PROJECTIONS
from adaptome.domains.protein.tokenizer import build_tokenizer, encode


def test_tokenizer_is_char_level_and_saves(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = build_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    text = "[Generate by superfamily] Superfamily=<Cyclin-like superfamily> Seq=<MKRV"
    ids = encode(tok, text)
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back(text)["input_ids"] == ids and back.pad_token_id == tok.pad_token_id


def test_sequence_blocks_concatenates_with_eos(tiny):
    _, tok = tiny
    blocks = pretrain.sequence_blocks(tok, ["MK", "AC"], 6)
    flat = encode(tok, "Seq=<MK>") + [tok.eos_token_id] + encode(tok, "Seq=<AC>") + [tok.eos_token_id]
    assert len(flat) == 20 and flat[0] == tok.bos_token_id and flat[9] == tok.eos_token_id
    assert blocks == [flat[0:6], flat[6:12], flat[12:18]]  # the 2-token remainder is dropped
    with pytest.raises(InputError, match="fewer than one block"):
        pretrain.sequence_blocks(tok, ["MK"], 1000)


def test_prompt_mask_covers_exactly_the_prompt(tiny):
    _, tok = tiny
    rec = formats.instruction_record("[Determine family]", "Seq=<MKRV>", "Family=<Cyclin_N>")
    enc = instruct.encode_record(tok, rec, 256)
    n_prompt = len(encode(tok, "[Determine family] Seq=<MKRV>"))
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert -100 not in enc["labels"][n_prompt:]
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    assert tok.decode(enc["input_ids"][n_prompt:-1]) == "Family=<Cyclin_N>"
    assert enc["input_ids"][-1] == tok.eos_token_id
    other = instruct.encode_record(tok, rec | {"output": "Family=<X>"}, 256)
    batch = instruct.pad_collate(tok.pad_token_id)([enc, other])
    short = len(encode(tok, "[Determine family] Seq=<MKRV>Family=<X>")) + 1
    assert batch["attention_mask"][1].sum() == short and (batch["labels"][1, short:] == -100).all()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_stage1_then_stage2_merge_loads_with_identical_logits(tmp_path, tiny):
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    recs = data.pfam_families(max_residues=48)
    train = dict(max_steps=30, batch_size=4, lr=5e-3, log_every=5, progress=False, resume=False)
    s1 = pretrain.run_stage(
        model, tok, pretrain.BlockDataset(pretrain.sequence_blocks(tok, [r.seq for r in recs], 64)),
        pretrain.stack_collate,
        "lora", {"r": 8, "lora_alpha": 16.0, "target_modules": LLAMA_PROJECTIONS,
                 "modules_to_save": ["embed_tokens", "lm_head"]}, train | {"output_dir": str(tmp_path / "s1")})
    assert is_peft_model(s1["model"]) and s1["last_loss"] < s1["first_loss"] - 0.3
    names = {n.split(".lora_A.")[0].split(".")[-1] for n, _ in s1["model"].named_parameters() if ".lora_A." in n}
    assert names == set(LLAMA_PROJECTIONS)
    assert any("embed_tokens.modules_to_save" in n for n, p in s1["model"].named_parameters() if p.requires_grad)
    ids = torch.tensor([encode(tok, "Seq=<MKRVLAGHE>")])
    merged = AutoModelForCausalLM.from_pretrained(s1["merged"])
    assert merged.config.tie_word_embeddings is False
    torch.testing.assert_close(_logits(merged, ids), _logits(s1["model"], ids), atol=1e-5, rtol=1e-4)

    recs2 = data.instruction_records(recs, data.FAMILY)
    s2 = instruct.instruct(recs2, merged, tok, 128, "lora", {"r": 4, "lora_alpha": 8.0,
                           "target_modules": LLAMA_PROJECTIONS}, train | {"output_dir": str(tmp_path / "s2")})
    assert s2["last_loss"] < s2["first_loss"] and s2["n_truncated"] == 0
    merged2 = AutoModelForCausalLM.from_pretrained(s2["merged"])
    torch.testing.assert_close(_logits(merged2, ids), _logits(s2["model"], ids), atol=1e-5, rtol=1e-4)
    with pytest.raises(FileExistsError, match="already exists"):
        pretrain.run_stage(merged2, tok, pretrain.BlockDataset([[1, 2, 3]]), pretrain.stack_collate, "lora", {},
                           train | {"output_dir": str(tmp_path / "s2")})
    assert (tmp_path / "s2" / "merged" / "config.json").is_file()  # untouched


def test_phi3_fused_projections_through_preset(tmp_path):
    """Phi-3 fuses q/k/v and gate/up; the ``attention+mlp`` preset finds them and the merge is exact."""
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    model = tiny_models.phi3(eval_mode=False, vocab_size=len(tok), num_layers=1, num_heads=2, num_kv_heads=2,
                             tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    blocks = pretrain.sequence_blocks(tok, [r.seq for r in data.pfam_families(max_residues=32)], 32)
    s = pretrain.run_stage(model, tok, pretrain.BlockDataset(blocks), pretrain.stack_collate, "lora",
                           {"r": 4, "lora_alpha": 8.0, "target_modules": "attention+mlp", "init_lora_weights": False,
                            "modules_to_save": ["embed_tokens", "lm_head"]},
                           dict(output_dir=str(tmp_path), max_steps=2, batch_size=4, progress=False, resume=False))
    names = {n.split(".lora_A.")[0].split(".")[-1] for n, _ in s["model"].named_parameters() if ".lora_A." in n}
    assert names == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    ids = torch.tensor([encode(tok, "Seq=<MKRV>")])
    merged = AutoModelForCausalLM.from_pretrained(s["merged"])
    torch.testing.assert_close(_logits(merged, ids), _logits(s["model"], ids), atol=1e-5, rtol=1e-4)
