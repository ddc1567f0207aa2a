"""Conditioning dropout in stage 2 (``InstructConfig.uncond_share``, ``instruct.py``): a generation record is shown
without its instruction and label with probability p at each read, so the model also learns p(seq), the
unconditional branch of classifier-free guidance."""

import json

import pytest
import torch
from typer.testing import CliRunner

from adaptome.domains.protein import data, instruct
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.training_data import read_training_data, write_training_data

runner = CliRunner()
GEN = {"instruction": "[Generate by family]", "input": "Family=<A>", "output": "Seq=<MKVLA>"}
DET = {"instruction": "[Determine family]", "input": "Seq=<MKVLA>", "output": "Family=<A>"}
OPEN = {"instruction": "[Generate by family]", "input": "Family=<B>", "output": "Seq=<" + "W" * 200 + ">"}


def _reads(ds, i: int, n: int) -> list[list[int]]:
    return [ds[i]["input_ids"] for _ in range(n)]


def test_generation_records_are_shown_without_their_condition_at_the_given_rate(tiny):
    _, tok = tiny
    ds = instruct.InstructionDataset(tok, [GEN, DET, OPEN], 64, uncond_share=0.3, seed=5)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    body = tok("Seq=<MKVLA>", add_special_tokens=False)["input_ids"]
    # the unconditional item, written out: <s> alone as source, the whole answer and </s> as target
    assert ds.uncond[0] == {"input_ids": [bos] + body + [eos], "labels": [instruct.IGNORE] + body + [eos]}
    opened = ds.uncond[2]  # the open crop keeps no </s>, as its conditional item
    assert opened["input_ids"][-1] != eos and opened["input_ids"][1:] == opened["labels"][1:]
    assert set(ds.uncond) == {0, 2} and ds.n_generation == 2
    seen = _reads(ds, 0, 2000)
    share = sum(ids == ds.uncond[0]["input_ids"] for ids in seen) / len(seen)
    assert 0.26 < share < 0.34
    assert all(ids in (ds.items[0]["input_ids"], ds.uncond[0]["input_ids"]) for ids in seen)
    assert _reads(ds, 1, 50) == [ds.items[1]["input_ids"]] * 50  # an understanding record is never changed
    # the draws repeat exactly for one seed and differ for another
    again = instruct.InstructionDataset(tok, [GEN, DET, OPEN], 64, uncond_share=0.3, seed=5)
    other = instruct.InstructionDataset(tok, [GEN, DET, OPEN], 64, uncond_share=0.3, seed=6)
    assert _reads(again, 0, 2000) == seen and _reads(other, 0, 2000) != seen
    off = instruct.InstructionDataset(tok, [GEN, DET, OPEN], 64)
    assert off.uncond == {} and _reads(off, 0, 20) == [off.items[0]["input_ids"]] * 20
    with pytest.raises(data.FormatError, match="uncond_share must be in"):
        instruct.InstructionDataset(tok, [GEN], 64, uncond_share=1.0)
    with pytest.raises(data.FormatError, match="none of the 1 instruction records is a generation record"):
        instruct.InstructionDataset(tok, [DET], 64, uncond_share=0.2)


def _first_residue_probs(model, tok, prompt: str) -> dict[str, float]:
    ids = torch.tensor([tok(prompt, add_special_tokens=True)["input_ids"]])  # (1, T)
    with torch.no_grad():
        p = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)  # (V,)
    return {aa: float(p[tok.convert_tokens_to_ids(aa)]) for aa in "AW"}


def test_instruct_cli_learns_the_unconditional_mixture_beside_each_label(tmp_path):
    """Two families whose sequences start with different residues: with uncond_share 0.5 the trained model puts
    the first residue of ``Seq=<`` (no label) on both families' residues, and each label's on its own."""
    from adaptome.domains.protein.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(None, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    with torch.no_grad():  # a random head (std 0.02) after RMSNorm bounds the logits' spread below 1, which a
        model.lm_head.weight.mul_(20)  # LoRA cannot widen; a trained stage-1 head is wider
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    recs = [{"instruction": "[Generate by family]", "input": f"Family=<{lab}>", "output": f"Seq=<{aa * 6}K>"}
            for lab, aa in (("a", "A"), ("w", "W")) for _ in range(4)]
    (tmp_path / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = data.data_dir().parent / "configs" / "instruct_tiny.yaml"
    args = ["instruct", "-c", str(cfg), "--set", f"train_files=[{tmp_path / 'i.jsonl'}]", "--set",
            f"model.name_or_path={base}", "--set", "train.max_steps=120", "--set", "train.log_every=1000",
            "--set", f"train.output_dir={tmp_path / 's2'}"]
    r = runner.invoke(app, args + ["--set", "uncond_share=0.5"])
    assert r.exit_code == 0, r.output
    assert "each of the 8 generation records was shown without its instruction and label with probability 0.5" \
        in r.output
    assert read_training_data(tmp_path / "s2" / "merged")["uncond_share"] == 0.5
    trained, tok2 = load_model_and_tokenizer(str(tmp_path / "s2" / "merged"))
    free = _first_residue_probs(trained, tok2, "Seq=<")
    assert free["A"] > 0.3 and free["W"] > 0.3, free
    assert _first_residue_probs(trained, tok2, data.FAMILY.generate_prompt("a", open_seq=True))["A"] > 0.8
    assert _first_residue_probs(trained, tok2, data.FAMILY.generate_prompt("w", open_seq=True))["W"] > 0.8
    bad = runner.invoke(app, args[:-1] + [f"train.output_dir={tmp_path / 's3'}", "--set", "uncond_share=1.5"])
    assert bad.exit_code != 0 and "uncond_share must be in [0, 1)" in bad.output
    assert not (tmp_path / "s3").exists()


def test_sample_guidance_notes_a_model_trained_without_conditioning_dropout(tiny, tmp_path):
    model, tok = tiny
    args = ["sample", "--task-name", "family", "--label", "X", "-n", "1", "--max-new-tokens", "4", "--guidance", "2"]
    outputs = []
    for name, share in (("plain", 0.0), ("dropout", 0.2)):
        folder = tmp_path / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        write_training_data(folder, {"labels": {"Family": {"X": 2}}, "uncond_share": share})
        r = runner.invoke(app, args + ["--model", str(folder), "--out", str(tmp_path / f"{name}.fa")])
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    assert "not trained with conditioning dropout" in outputs[0]
    assert "not trained with conditioning dropout" not in outputs[1]
