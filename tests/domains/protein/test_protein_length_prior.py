"""``length_prior``: the per-label training lengths saved with a stage-2 model, and the sampler that ends each
sample at a length drawn from them (an option reported as what it is, never the default)."""

import random

import pytest
from typer.testing import CliRunner

from adaptome.domains.protein import data, sample
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.formats import ProteinError, instruction_record
from adaptome.domains.protein.training_data import records_summary, write_training_data


def test_label_lengths_hold_whole_generation_answers_only(tiny):
    _, tok = tiny
    recs = [instruction_record("[Generate by family]", "Family=<A>", "Seq=<MKV>"),
            instruction_record("[Generate by family]", "Family=<A>", "Seq=<MKVLLA>"),
            instruction_record("[Generate by family]", "Family=<B>", "Seq=<MKVLLAGG"),  # cropped open: no length
            instruction_record("[Determine family]", "Seq=<WWWWWWWWWW>", "Family=<B>")]  # not a generation record
    info = records_summary(tok, recs)
    assert info["label_lengths"] == {"Family": {"A": [3, 6]}}
    assert info["labels"] == {"Family": {"A": 2, "B": 2}}


def test_length_prior_ends_every_sample_at_a_drawn_training_length(tiny):
    model, tok = tiny
    lengths = {"X": [5, 9, 30], "Y": [12]}
    params = sample.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=40,
                                   seed=7, batch_size=5, length_prior=True)
    got = sample.sample(model, tok, data.FAMILY, ["X", "Y"], 6, params, label_lengths=lengths)
    rng = random.Random(7)  # the draws, in plan order, as the docstring says
    want = [rng.choice(lengths[lab]) for lab in ["X"] * 6 + ["Y"] * 6]
    assert [len(s.seq) for s in got] == want
    assert all(s.complete and s.n_tokens == len(s.seq) + 1 for s in got)  # residues, then the forced '>'
    # the same draws with a prefix: the prefix counts towards the length
    pre = sample.sample(model, tok, data.FAMILY, ["X"], 3, params, prefix="MK", label_lengths=lengths)
    rng = random.Random(7)
    assert [len(s.seq) for s in pre] == [rng.choice(lengths["X"]) for _ in range(3)]
    assert all(s.seq.startswith("MK") for s in pre)
    # plain sampling of the same random model rarely closes where the prior would: the option is what acts
    plain = sample.sample(model, tok, data.FAMILY, ["X"], 6, sample.SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=40, seed=7))
    assert [len(s.seq) for s in plain] != want[:6]
    assert "length_prior=True" in sample.header(1, got[0], params)
    with pytest.raises(ProteinError, match="no training lengths for label 'Z'"):
        sample.sample(model, tok, data.FAMILY, ["Z"], 1, params, label_lengths=lengths)
    with pytest.raises(ProteinError, match="needs a label"):
        sample.sample(model, tok, None, [None], 1, params, label_lengths=lengths)
    with pytest.raises(ProteinError, match="needs max_new_tokens >= 31"):
        sample.sample(model, tok, data.FAMILY, ["X"], 6, sample.SamplingParams(max_new_tokens=20, length_prior=True),
                      label_lengths=lengths)


def test_sample_cli_length_prior_reads_the_saved_lengths_and_says_what_it_does(tiny, tmp_path):
    model, tok = tiny
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    args = ["sample", "--model", str(folder), "--task-name", "family", "--label", "X", "-n", "3", "--length-prior"]
    write_training_data(folder, {"labels": {"Family": {"X": 2}}})  # an older folder: no label lengths
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "a.fa")])
    assert r.exit_code == 2 and "records no training lengths" in r.output and not (tmp_path / "a.fa").exists()
    write_training_data(folder, {"labels": {"Family": {"X": 2}}, "label_lengths": {"Family": {"X": [7, 11]}}})
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "b.fa")])
    assert r.exit_code == 0, r.output
    assert "not the model's own stopping" in r.output
    lines = (tmp_path / "b.fa").read_text().splitlines()
    heads = [x for x in lines if x.startswith(">")]
    seqs = "\n".join(lines).split("\n>")
    assert len(heads) == 3 and all("length_prior=True" in h for h in heads)
    assert all(len("".join(s.splitlines()[1:])) in (7, 11) for s in seqs)
