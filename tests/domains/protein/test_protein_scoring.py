import math

import pytest
import torch

from adaptome.domains.protein import classify, data, evaluate, mutations
from adaptome.domains.protein.formats import FormatError, seq_line
from adaptome.domains.protein.kmer import KmerClassifier
from adaptome.domains.protein.tokenizer import encode


def _explicit_logprob(model, tok, prompt, target):
    ids = encode(tok, prompt) + encode(tok, target, bos=False) + [tok.eos_token_id]
    n_src = len(encode(tok, prompt))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    total = 0.0
    for t in range(n_src, len(ids)):  # token t predicted from position t-1
        total += torch.log_softmax(logits[t - 1], -1)[ids[t]].item()
    return total, len(ids) - n_src


def test_score_targets_matches_explicit_sum_with_padding(tiny):
    model, tok = tiny
    pairs = [("[Determine family] Seq=<MKRV>", "Family=<A>"), ("", "Seq=<MKRVLLAGHEW>"), ("x", "y")]
    got = classify.score_targets(model, tok, pairs, batch_size=3)  # padded batch
    for (p, t), (lp, n) in zip(pairs, got):
        ref, n_ref = _explicit_logprob(model, tok, p, t)
        assert n == n_ref and lp == pytest.approx(ref, abs=1e-4)


def test_mutation_notation_offset_and_score(tiny):
    model, tok = tiny
    wt, offset, rows = data.tem1()
    assert len(wt) == 263 and len(rows) == 503 and rows[0][0] == "P25C"
    assert mutations.apply_mutant(wt, "H24C", 24)[0] == "C"
    assert mutations.apply_mutant(wt, "H24C:P25A", 24)[:3] == "CAE"
    with pytest.raises(FormatError, match="wild type has 'H' at position 24, not 'A'"):
        mutations.apply_mutant(wt, "A24C", 24)
    with pytest.raises(FormatError, match="outside the wild type"):
        mutations.apply_mutant(wt, "H24C", 0 - 300)
    with pytest.raises(FormatError, match="expected e.g. H24C"):
        mutations.parse_mutant("24C")
    scores = mutations.score_mutants(model, tok, "MKRVLA", ["K2A", "M1M"], offset=1)

    def nll(s):
        return -_explicit_logprob(model, tok, "", seq_line(s))[0]

    assert scores[0] == pytest.approx(nll("MKRVLA") - nll("MARVLA"), abs=1e-4)
    assert scores[1] == pytest.approx(0.0, abs=1e-5)


def test_identity_divergence_and_kmer_judge():
    assert evaluate.identity("MKRVLAGHEW", "MKRVLAGHEW") == 1.0
    assert evaluate.identity("MKRVLAGHEW", "MKRVLAGHEA") == pytest.approx(0.9)
    assert evaluate.identity("MKRV", "") == 0.0
    assert evaluate.js_divergence([1, 0], [1, 0]) == 0.0
    assert evaluate.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = [0.5, 0.5], [0.9, 0.1]
    m = [0.7, 0.3]
    ref = 0.5 * sum(a * math.log2(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log2(b / c) for b, c in zip(q, m))
    assert evaluate.js_divergence(p, q) == pytest.approx(ref)
    # planted signal: class A is K/R-rich, class B is L/V-rich
    import random
    rng = random.Random(0)

    def mk(alpha):
        return "".join(rng.choice(alpha) for _ in range(60))

    seqs = [mk("KRKRAG") for _ in range(10)] + [mk("LVLVAG") for _ in range(10)]
    km = KmerClassifier(3).fit(seqs, ["A"] * 10 + ["B"] * 10)
    assert km.predict([mk("KRKRAG"), mk("LVLVAG")]) == ["A", "B"]


def test_generation_report_on_real_sequences_as_samples():
    from adaptome.domains.protein.sample import Sample

    recs = data.pfam_families(max_residues=64)
    train, test = data.split_by_label(recs, 3)
    as_samples = [Sample(f"Family=<{r.label}>", r.label, "", r.seq, True, (), 0) for r in test]
    g = evaluate.generation_report(as_samples, train, train)
    assert g["validity"] == 1.0 and g["control_chance"] == pytest.approx(0.2)
    assert g["control_accuracy"] >= 0.6  # held-out real members are recognised (the judge is not perfect)
    assert g["composition_js_divergence"] < 0.05 and g["length_ks_pvalue"] > 0.05
    shuffled = [Sample(s.condition, s.label, "", "".join(sorted(s.seq)), True, (), 0) for s in as_samples]
    assert evaluate.generation_report(shuffled, train, train)["novelty"] > g["novelty"]


def test_perplexity_on_is_core_perplexity_of_the_scored_sequence_lines(tiny):
    """``evaluate.perplexity_on`` (through core's ``lm_perplexity``) equals exp(-sum log p / n) of the
    ``Seq=<...></s>`` targets scored after ``<s>`` by ``classify.score_targets``."""
    model, tok = tiny
    seqs = ["MKV", "ACDEFGHIK", "WY"]
    scored = classify.score_targets(model, tok, [("", seq_line(s)) for s in seqs], batch_size=2)
    want = math.exp(-sum(lp for lp, _ in scored) / sum(n for _, n in scored))
    assert evaluate.perplexity_on(model, tok, seqs, batch_size=2) == pytest.approx(want, rel=1e-5)
