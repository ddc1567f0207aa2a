"""Classifier-free guidance in the sampler (``guidance.py``): every guided step equals the formula computed from
full, unpadded forward passes of the conditional and the unconditional prompt, through the sampler's batching
(left padding, key/value cache, residue constraint) and the CLI."""

import pytest
import torch
from typer.testing import CliRunner

from adaptome.domains.protein import data, sample
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.formats import ProteinError
from adaptome.domains.protein.guidance import unconditional_prompt
from adaptome.domains.protein.training_data import write_training_data


def _next_logprobs(model, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)  # (V,)


def _reference_greedy(model, tok, prompt: str, scale: float, n: int, banned: list[int]) -> str:
    """Greedy decoding of log p(w | x) + scale (log p(w | c, x) - log p(w | x)), one full forward pass per
    step and branch (no padding, no cache), with the banned tokens at -inf."""
    uncond, text = unconditional_prompt(prompt), ""
    for _ in range(n):
        c = _next_logprobs(model, tok, prompt + text)
        u = _next_logprobs(model, tok, uncond + text)
        g = u + scale * (c - u)
        g[banned] = -torch.inf
        w = tok.convert_ids_to_tokens(int(g.argmax()))
        if w == ">":
            return text + w
        text += w
    return text


def test_guided_greedy_samples_follow_the_formula_step_by_step(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    labels = ["X", "Longer_label_9"]  # prompts of different lengths: the batch is left-padded
    params = sample.SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12, batch_size=2,
                                   residues_only=True, guidance=3.0)
    got = sample.sample(model, tok, data.FAMILY, labels, 1, params, prefix="MK")
    banned = sample.residue_suppression(tok)
    for s, label in zip(got, labels):
        prompt = data.FAMILY.generate_prompt(label, "MK", open_seq=True)
        want = _reference_greedy(model, tok, prompt, 3.0, 12, banned)
        assert "MK" + want.rstrip(">") == s.seq and s.complete == want.endswith(">")
    plain = sample.sample(model, tok, data.FAMILY, labels, 1,
                          sample.SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12,
                                                batch_size=2, residues_only=True), prefix="MK")
    assert [s.seq for s in plain] != [s.seq for s in got]  # the guidance acts
    assert "guidance=3.0" in sample.header(1, got[0], params)


def test_guidance_is_refused_where_it_has_no_meaning(tiny):
    model, tok = tiny
    with pytest.raises(ProteinError, match="needs a label on every sample"):
        sample.sample(model, tok, data.FAMILY, [None], 1, sample.SamplingParams(max_new_tokens=4, guidance=2.0))
    with pytest.raises(ProteinError, match="must be >= 1"):
        sample.sample(model, tok, data.FAMILY, ["X"], 1, sample.SamplingParams(max_new_tokens=4, guidance=0.5))
    assert unconditional_prompt("[Generate by family] Family=<X>Seq=<MK") == "Seq=<MK"
    with pytest.raises(ProteinError, match="conditional prompt"):
        unconditional_prompt("Seq=<MK")


def test_sample_cli_guidance_is_written_in_every_header(tiny, tmp_path):
    model, tok = tiny
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    write_training_data(folder, {"labels": {"Family": {"X": 2}}})
    args = ["sample", "--model", str(folder), "--task-name", "family", "--label", "X", "-n", "2",
            "--max-new-tokens", "8"]
    r = CliRunner().invoke(app, args + ["--guidance", "2", "--out", str(tmp_path / "g.fa")])
    assert r.exit_code == 0, r.output
    assert "classifier-free guidance 2.0" in r.output
    heads = [x for x in (tmp_path / "g.fa").read_text().splitlines() if x.startswith(">")]
    assert len(heads) == 2 and all("guidance=2.0" in h for h in heads)
    r = CliRunner().invoke(app, args + ["--guidance", "0.5", "--out", str(tmp_path / "h.fa")])
    assert r.exit_code == 2 and "must be >= 1" in r.output and not (tmp_path / "h.fa").exists()
    no_label = [a for a in args if a not in ("--label", "X")]
    r = CliRunner().invoke(app, no_label + ["--guidance", "2", "--out", str(tmp_path / "u.fa")])
    assert r.exit_code == 2 and "--guidance needs --label" in r.output and not (tmp_path / "u.fa").exists()
