"""Generation that keeps its length: crop windows with honest markers, the low-complexity measure, the
length KS report, and the sampler's length limit."""

import math
import random

import pytest

from adaptome.domains.protein import data, evaluate, pretrain, sample
from adaptome.domains.protein.formats import ProteinError, Record
from adaptome.domains.protein.lowcomplexity import entropy_bits, low_complexity_mask, low_complexity_share


def test_a_window_closes_only_when_it_holds_the_real_end(tiny):
    _, tok = tiny
    rng = random.Random(3)
    seq = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(50))
    for seed in range(5):
        pieces = data.crop_windows(seq, 16, random.Random(seed))
        assert "".join(p.seq for p in pieces) == seq and all(len(p.seq) <= 16 for p in pieces)
        assert [p.start for p in pieces] == [True] + [False] * (len(pieces) - 1)
        assert [p.end for p in pieces] == [False] * (len(pieces) - 1) + [True]
        for p in pieces:
            text = tok.decode(pretrain.piece_tokens(tok, p))
            assert text.startswith("<s>Seq=<") == p.start
            body = text.removeprefix("<s>").removesuffix("</s>").replace("Seq=<", "")
            assert text.endswith("></s>") == p.end and (">" in body) == p.end
    assert data.crop_windows(seq, 50, rng) == [data.Piece(seq, True, True)]  # a protein that fits is whole
    # packed: one '>' per protein, right after its real last residue; junction labels are -100
    seqs = ["M" + "A" * 40 + "W", "M" + "C" * 30 + "Y"]
    blocks, labels = pretrain.window_blocks(tok, seqs, 9, 12, seed=1)  # 50 + 40 tokens: nothing dropped
    stream = tok.decode(sum(blocks, []))
    assert len(blocks) == 10 and stream.replace("<s>", "").replace("</s>", "").count(">") == 2
    assert stream.count("Seq=<") == 2 and stream.endswith("Y></s>") and "W></s><s>Seq=<M" in stream
    assert "A>" not in stream and "C>" not in stream  # no false end inside a protein
    flat_ids, flat_lab = sum(blocks, []), sum(labels, [])
    rng = random.Random(1)  # the same draws, in the same order
    n_windows = sum(len(data.crop_windows(x, 12, rng)) for x in seqs)
    assert sum(x == -100 for x in flat_lab) == n_windows and flat_lab[0] == -100
    assert all(x in (-100, i) for x, i in zip(flat_lab, flat_ids))
    # the old bug: a first-N crop would have written 'Seq=<MAAAAAAAAAAA>' with a closing marker
    assert "Seq=<" + "M" + "A" * 11 + ">" not in stream


def test_entropy_and_low_complexity_share_by_hand():
    assert entropy_bits("AAAAAAAAAAAA") == 0.0
    assert entropy_bits("ACDEFGHIKLMN") == pytest.approx(math.log2(12))  # 3.585 bits > 2.2
    # counts {A:6, C:2, D:2, E:2}: -(1/2 log2 1/2 + 3 * 1/6 log2 1/6) = 0.5 + 0.5 log2 6 = 1.7925 bits
    assert entropy_bits("AAAAAACCDDEE") == pytest.approx(0.5 + 0.5 * math.log2(6))
    # A run of 12 A then 12 distinct residues: windows starting at 0..k are low while their entropy
    # stays <= 2.2. Window at offset j holds (12 - j) A and j distinct letters:
    # H(j) = -((12-j)/12) log2((12-j)/12) + j * (1/12) log2 12. H(4) = 0.390 + 1.195 = 1.585;
    # H(5) = 0.5117 + 1.4937 = 2.005; H(6) = 0.5 + 1.792 = 2.292 > 2.2. So windows 0..5 are low and
    # they cover residues 0..16: 17 of 24 residues.
    seq = "A" * 12 + "CDEFGHIKLMNP"
    h = [-((12 - j) / 12) * math.log2((12 - j) / 12) + j / 12 * math.log2(12) for j in range(7)]
    assert h[5] < 2.2 < h[6]
    assert low_complexity_mask(seq) == [True] * 17 + [False] * 7
    assert low_complexity_share([seq]) == pytest.approx(17 / 24)
    # pooled over a set; a sequence shorter than a window is never flagged but counts
    assert low_complexity_share([seq, "ACDEFGHIKLMN", "AAAA"]) == pytest.approx(17 / (24 + 12 + 4))


def _s(label, seq):
    return sample.Sample(f"Family=<{label}>", label, "", seq, True, (), len(seq))


def test_length_ks_and_per_label_report_numbers():
    # lengths 1,2,3 vs 4,5,6: D = 1; exact two-sided p = 2 / C(6, 3) = 0.1
    ks = evaluate.length_ks(["A", "AA", "AAA"], ["C" * 4, "C" * 5, "C" * 6])
    assert ks["length_ks_statistic"] == 1.0 and ks["length_ks_pvalue"] == pytest.approx(2 / math.comb(6, 3))
    assert evaluate.length_ks(["AC", "ACD"], ["MK", "MKV"]) == {"length_ks_statistic": 0.0, "length_ks_pvalue": 1.0}
    real = [Record(f"r{i}", s, "X") for i, s in enumerate(["ACDEFGHIKLMNPQ", "A" * 12, "ACDEFGHIKLMNPQRS"])]
    gen = [_s("X", "A" * 20), _s("X", "ACDEFGHIKLMN"), _s("X", "")]
    row = evaluate.per_label_report(gen, real)["X"]
    assert row["n_samples"] == 3 and row["n_nonempty"] == 2 and row["n_real"] == 3
    assert row["mean_length"] == 16 and row["real_mean_length"] == pytest.approx(42 / 3)
    assert row["real_low_complexity_share"] == pytest.approx(12 / 42)
    assert row["low_complexity_share"] == pytest.approx(20 / 32)
    assert row["low_complexity_ratio"] == pytest.approx((20 / 32) / (12 / 42))
    assert row["length_ks_statistic"] == pytest.approx(evaluate.length_ks(["A" * 20, "A" * 12], [r.seq for r in real])
                                                       ["length_ks_statistic"])


def test_generation_report_refuses_labels_outside_the_reference():
    real = [Record(f"r{i}", "ACDEFGHIKLMN" * 2, lab) for i, lab in enumerate("XXXYYY")]
    with pytest.raises(evaluate.ForeignLabelError, match="'Z'.*reference: X, Y"):
        evaluate.generation_report([_s("X", "ACDE"), _s("Z", "ACDE")], real, real)
    rep = evaluate.generation_report([_s("X", "ACDEFGHIKLMN"), _s("Y", "A" * 13)], real, real)
    assert rep["per_label"]["Y"]["low_complexity_share"] == 1.0 and rep["low_complexity_share"] == 0.52


def test_length_limit_follows_training_data_and_the_position_limit(tiny):
    model, tok = tiny
    prompts = ["[Generate by family] Family=<Cyclin_N>"]
    p = len(tok(prompts[0])["input_ids"])
    limit = model.config.max_position_embeddings
    n, notes = sample.resolve_max_new_tokens(model, tok, prompts, None, {"max_sequence_tokens": 300})
    assert n == 450 and "1.5 x" in notes[0]
    n, notes = sample.resolve_max_new_tokens(model, tok, prompts, None, None)
    assert n == limit - p and "position limit" in notes[-1]  # 1024 does not fit beside the prompt
    n, notes = sample.resolve_max_new_tokens(model, tok, prompts, None, {"max_sequence_tokens": 2000})
    assert n == limit - p and "longer samples are cut" in notes[-1]
    assert sample.resolve_max_new_tokens(model, tok, prompts, 77, None) == (77, [])
    with pytest.raises(ProteinError, match="position limit"):
        sample.resolve_max_new_tokens(model, tok, prompts, limit, None)
    with pytest.raises(ProteinError, match="position limit"):
        sample.sample(model, tok, data.FAMILY, ["Cyclin_N"], 1, sample.SamplingParams(max_new_tokens=limit))
    assert sample.preset_for(model) == "small" and sample.with_preset("prollama").temperature == 0.2
    with pytest.raises(ProteinError, match="known: prollama, small"):
        sample.with_preset("big")


def test_residues_only_samples_residues_and_stops_only_at_the_closing_marker(tiny):
    from adaptome.domains.protein.formats import STANDARD_AA

    model, tok = tiny
    banned = sample.residue_suppression(tok)
    kept = sorted(set(range(len(tok))) - set(banned))
    assert sorted(tok.convert_ids_to_tokens(kept)) == sorted(STANDARD_AA + ">") and tok.eos_token_id in banned
    # the prompt runs on into the answer's Seq=< exactly as a generation record's training text does
    plan = sample.prompt_plan(data.FAMILY, ["Cyclin_N"], 1, "MK")
    assert plan == [("Cyclin_N", "[Generate by family] Family=<Cyclin_N>Seq=<MK")]
    assert sample.prompt_plan(data.FAMILY, ["X"], 1)[0][1].endswith("Family=<X>Seq=<")
    free = sample.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=40,
                                 seed=3, batch_size=8)
    on = sample.sample(model, tok, data.FAMILY, ["Cyclin_N"], 8, sample.with_preset("small", max_new_tokens=40, seed=3,
                                                                                      residues_only=True))
    off = sample.sample(model, tok, data.FAMILY, ["Cyclin_N"], 8, free)
    # a random model over ~100 tokens: unconstrained, it soon writes a non-residue (or stops at </s>)
    assert any(s.invalid or (not s.complete and s.n_tokens < 40) for s in off)
    for s in on:  # constrained: residues only; a sample ends at '>' or runs to the limit, never at </s>
        assert not s.invalid and set(s.seq) <= set(STANDARD_AA)
        assert s.complete or s.n_tokens == 40
    assert sample.header(1, on[0], sample.with_preset("small", residues_only=True)).count("residues_only=True") == 1


def test_whole_windows_packing_never_splits_a_window_across_blocks(tiny):
    from adaptome.core.text import InputError

    _, tok = tiny
    seqs = ["M" + "A" * 20 + "W", "M" + "C" * 5 + "Y", "M" + "D" * 12 + "K"]  # 30, 13 and 20 tokens whole
    blocks, labels = pretrain.window_blocks(tok, seqs, 32, None, seed=0, whole_windows=True)
    pad = tok.pad_token_id
    # block 1: protein 1 (30 tokens) + 2 pads; block 2: protein 2 (13) + protein 3 (20) would be 33 > 32,
    # so protein 3 opens block 3; the last block is padded, not dropped
    assert len(blocks) == 3 and all(len(b) == 32 for b in blocks)
    assert [tok.decode([t for t in b if t != pad]) for b in blocks] == [
        f"<s>Seq=<{seqs[0]}></s>", f"<s>Seq=<{seqs[1]}></s>", f"<s>Seq=<{seqs[2]}></s>"]
    for b, lab in zip(blocks, labels):
        assert b[0] == tok.bos_token_id and lab[0] == -100  # every block opens with a window's start
        assert all(x == -100 for x, t in zip(lab, b) if t == pad)  # padding carries no loss
        assert all(x in (-100, t) for x, t in zip(lab, b))
    # the default packing cuts the stream anywhere: protein 1's end lands in the second block
    cut, _ = pretrain.window_blocks(tok, seqs, 16, None, seed=0)
    assert "W></s>" in tok.decode(cut[1]) and not tok.decode(cut[1]).startswith("<s>")
    with pytest.raises(InputError, match="does not fit block_size 16"):
        pretrain.window_blocks(tok, seqs, 16, None, seed=0, whole_windows=True)
