"""The proof: ProLLaMA's two stages on the shipped Pfam families teach the tiny model the families."""

import json

import pytest

from adaptome.domains.protein import data, formats, sample


def test_two_stages_learn_families_and_report_baselines(two_stage_run, tuned):
    out, rep = two_stage_run
    c, g = rep["classification"], rep["generation"]
    assert rep["stage1"]["last_loss"] < rep["stage1"]["first_loss"] - 0.5
    assert rep["stage2"]["last_loss"] < rep["stage2"]["first_loss"] - 1.0
    # held-out family prediction clearly beats the majority class (0.2 with 5 balanced families)
    assert c["majority_accuracy"] == 0.2
    assert c["model_accuracy"] >= c["majority_accuracy"] + 0.2
    assert c["bayes_accuracy"] >= c["majority_accuracy"] + 0.3
    assert c["probe_accuracy"] >= c["majority_accuracy"] + 0.5  # the default classifier; measured 0.867
    # conditional samples are recognised as the requested family clearly above chance (0.2)
    assert g["n_generated"] == 60
    # whole sequences in both stages (instruction records fitted, generation answers left open when cropped):
    # sample lengths follow the real ones (measured mean 181 vs 225 residues; records cropped to 128 and closed
    # gave about 110); the KS p-value (0.03-0.08 with the thread count) is reported, not asserted. The 64-wide
    # model conditions only weakly on the family (measured 0.28 vs chance 0.2; the slow test's wider model, 0.43)
    assert g["mean_length"] > 0.6 * g["reference_mean_length"]
    assert g["control_accuracy"] > g["control_chance"]
    from adaptome.domains.protein.kmer import KmerClassifier

    model, tok = tuned
    params = sample.with_preset("prollama", max_new_tokens=rep["sampling"]["max_new_tokens"])
    near_greedy = sample.sample(model, tok, data.FAMILY, rep["labels"], 12, params)
    real = data.pfam_families(min_count=7, max_per_family=12)
    judge = KmerClassifier(3).fit([r.seq for r in real], [r.label for r in real])
    hits = [bool(s.seq) and p == s.label for s, p in zip(near_greedy, judge.predict([s.seq for s in near_greedy]))]
    assert sum(hits) / len(hits) > g["control_chance"]
    # validity = closed with '>' within the length limit and only residue letters: measured 0.13-0.32 across
    # runs (thread counts); most whole-length samples of the 64-wide model run to the limit without closing
    assert g["validity"] > 0.05
    md = (out / "report" / "report.md").read_text()
    assert "majority class" in md and "k-mer logistic regression" in md and "control_accuracy" in md
    saved = json.loads((out / "report" / "report.json").read_text())
    assert saved["classification"]["model_accuracy"] == c["model_accuracy"]
    assert "skipped" in " ".join(saved["structure"].values()) or saved["structure"]
    # the FASTA records condition and sampling parameters
    heads = formats.read_fasta_headers(out / "samples.fasta")
    meta = sample.parse_header(heads[0][0])
    used = rep["sampling"]  # the tiny model samples with the `small` preset (sample.PRESETS)
    assert used["preset"] == "small" and meta["condition"] == "Family=<12TM_1>"
    assert meta["temperature"] == str(sample.PRESETS["small"].temperature) == str(used["temperature"])
    assert meta["top_k"] == str(used["top_k"]) and meta["repetition_penalty"] == str(used["repetition_penalty"])
    assert meta["max_new_tokens"] == str(used["max_new_tokens"]) and meta["complete"] in ("yes", "no")


def test_fixed_seed_sampling_is_reproducible_and_stops_at_gt(tuned):
    model, tok = tuned
    params = sample.SamplingParams(max_new_tokens=60, seed=7, batch_size=4)
    a = sample.sample(model, tok, data.FAMILY, ["Cyclin_N", "COX2_TM"], 3, params)
    b = sample.sample(model, tok, data.FAMILY, ["Cyclin_N", "COX2_TM"], 3, params)
    assert [s.seq for s in a] == [s.seq for s in b]
    c = sample.sample(model, tok, data.FAMILY, ["Cyclin_N", "COX2_TM"], 3, params.__class__(
        max_new_tokens=60, seed=8, batch_size=4, temperature=1.0))
    assert [s.seq for s in c] != [s.seq for s in a]
    for s in a:
        assert ">" not in s.seq and s.n_tokens <= 60
    # prefix: the sequence starts with it and the prompt leaves Seq=< open
    p = sample.sample(model, tok, data.FAMILY, ["Cyclin_N"], 2, params, prefix="MKR")
    assert all(s.seq.startswith("MKR") for s in p)


def test_parse_continuation_and_invalid_flags():
    assert sample.parse_continuation("[Generate by family] Family=<X>", "Seq=<MKV>") == ("MKV", True)
    assert sample.parse_continuation("x Seq=<MK", "RV>junk") == ("MKRV", True)
    assert sample.parse_continuation("Seq=<", "MKRV") == ("MKRV", False)
    s = sample.Sample("unconditional", None, "", "MK1B", True, tuple(formats.invalid_positions("MK1B")), 5)
    assert s.invalid == (3, 4) and not s.valid
    h = sample.header(3, s, sample.SamplingParams())
    assert h.startswith("gen-0003 condition=unconditional | prefix=- | temperature=0.2 | top_k=40 | top_p=0.9")
    assert sample.parse_header(h)["invalid"] == "2"


@pytest.mark.slow
def test_wider_model_conditions_generation_and_keeps_lengths(tmp_path):
    """A 128-wide model (about 1.5 CPU minutes) conditions on the family well above chance, with sample
    lengths and low-complexity share near the real ones (measured: control 0.43 vs chance 0.2, mean length
    183 vs 225, KS p 0.08, low-complexity ratio 1.29; ProLLaMA's near-greedy preset collapses to 5-7).
    Before whole sequences were used (every record cropped to 128 residues and closed), control reached 0.8
    but every sample ended near 128 residues."""
    from adaptome.domains.protein.quickstart import two_stage

    rep = two_stage(tmp_path, stage1_set=("model.hidden_size=128", "model.intermediate_size=256"))
    g = rep["generation"]
    assert g["control_accuracy"] >= g["control_chance"] + 0.1
    assert g["mean_length"] > 0.6 * g["reference_mean_length"] and g["low_complexity_ratio"] <= 2.0
    assert rep["classification"]["bayes_accuracy"] >= 0.6  # p(seq | family); measured 0.8 (determine: 0.47)
