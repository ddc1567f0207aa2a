"""Metrics of ``adaptome.core.evaluation`` against scikit-learn / scipy and hand-computed values."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics as skm

from adaptome.core import evaluation as ev


# ---------------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------------
def _pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The combinatorial definition with exact integers: 1 - C(n-c, k) / C(n, k)."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 0, 1), (5, 5, 5), (10, 3, 1), (10, 3, 5),
                                   (10, 3, 8), (20, 1, 10), (200, 7, 1), (200, 7, 10), (200, 7, 100)])
def test_pass_at_k_matches_combinatorial_definition(n, c, k):
    assert ev.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_exact(n, c, k), rel=1e-12, abs=1e-14)


def test_pass_at_k_hand_values():
    assert ev.pass_at_k(10, 0, 5) == 0.0
    assert ev.pass_at_k(10, 10, 1) == 1.0
    assert ev.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    assert ev.pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert ev.pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a pass


def test_pass_at_k_large_n_where_naive_form_overflows():
    n, c, k = 5000, 13, 500
    with pytest.raises(OverflowError):  # the naive ratio of binomials cannot even be formed in floats
        float(math.comb(n - c, k)) / float(math.comb(n, k))
    with np.errstate(all="ignore"):  # scipy's float binomials give inf / inf = nan
        assert math.isnan(special.comb(n - c, k) / special.comb(n, k))
    assert ev.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_exact(n, c, k), rel=1e-10)
    n, c, k = 5000, 2, 10
    assert ev.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_exact(n, c, k), rel=1e-10)


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k=6 is larger"):
        ev.pass_at_k(5, 1, 6)
    with pytest.raises(ValueError, match="c=7"):
        ev.pass_at_k(5, 7, 1)
    with pytest.raises(ValueError):
        ev.pass_at_k(5, 1, 0)


def test_mean_pass_at_k_variable_n():
    ns, cs, k = [10, 20, 5, 200], [0, 3, 5, 17], 5
    want = np.mean([_pass_at_k_exact(n, c, k) for n, c in zip(ns, cs)])
    assert ev.mean_pass_at_k(ns, cs, k) == pytest.approx(want, rel=1e-12)


def test_mean_pass_at_k_too_few_samples():
    with pytest.raises(ValueError, match="problem 1 has n=3"):
        ev.mean_pass_at_k([10, 3], [2, 1], 5)
    want = _pass_at_k_exact(10, 2, 5)
    assert ev.mean_pass_at_k([10, 3], [2, 1], 5, too_few="skip") == pytest.approx(want)
    with pytest.raises(ValueError, match="every problem"):
        ev.mean_pass_at_k([3], [1], 5, too_few="skip")


# ---------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_metrics_match_references(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=50)
    p = 0.6 * y + rng.normal(scale=0.5, size=50)
    assert ev.r2_score(y, p) == pytest.approx(skm.r2_score(y, p), rel=1e-12)
    assert ev.mse(y, p) == pytest.approx(skm.mean_squared_error(y, p), rel=1e-12)
    assert ev.pearson(y, p) == pytest.approx(stats.pearsonr(y, p).statistic, rel=1e-12)
    assert ev.spearman(y, p) == pytest.approx(stats.spearmanr(y, p).statistic, rel=1e-12)


def test_spearman_and_rankdata_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=40)
    y = rng.integers(0, 4, size=40)
    np.testing.assert_allclose(ev.rankdata(x), stats.rankdata(x))
    assert ev.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    np.testing.assert_allclose(ev.rankdata([3, 1, 3, 2]), [3.5, 1, 3.5, 2])


def test_regression_hand_values():
    assert ev.r2_score([1, 2, 3], [1, 2, 3]) == 1.0
    assert ev.r2_score([1, 2, 3], [2, 2, 2]) == 0.0  # predicting the mean
    assert ev.r2_score([1, 2, 3], [3, 2, 1]) == pytest.approx(1 - 8 / 2)  # SS_res 8, SS_tot 2
    assert ev.r2_score([2, 2, 2], [2, 2, 2]) == 1.0  # constant target, as sklearn
    assert ev.r2_score([2, 2, 2], [1, 2, 2]) == 0.0
    assert ev.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert ev.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(ev.pearson([1, 1, 1], [1, 2, 3]))
    assert ev.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert ev.mse([0, 0], [1, 3]) == pytest.approx(5.0)


def test_regression_bad_input():
    with pytest.raises(ValueError, match="different lengths"):
        ev.r2_score([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        ev.pearson([1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        ev.mse([], [])


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=60)
    p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 5, size=60))  # class 4 only predicted
    assert ev.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert ev.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0.0))


def test_classification_string_labels_and_hand_values():
    y = ["a", "a", "b", "c"]
    p = ["a", "b", "b", "b"]
    assert ev.accuracy(y, p) == 0.5
    # F1: a = 2*1/(2+0+1) = 2/3, b = 2*1/(2+2+0) = 1/2, c = 0
    assert ev.macro_f1(y, p) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=80)
    s = y * 0.7 + rng.normal(size=80)
    assert ev.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-12)
    s_tied = np.round(s)  # many ties
    assert ev.roc_auc(y, s_tied) == pytest.approx(skm.roc_auc_score(y, s_tied), rel=1e-12)


def test_roc_auc_hand_values_and_errors():
    assert ev.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert ev.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert ev.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert ev.roc_auc([True, False, True], [0.9, 0.5, 0.1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="only one class"):
        ev.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="binary"):
        ev.roc_auc([0, 1, 2], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------------------------------------
# entity F1
# ---------------------------------------------------------------------------------------------
def test_entity_spans_bio():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"]
    assert ev.entity_spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6), ("ORG", 6, 7)]


def test_entity_spans_stray_inside_tags():
    tags = ["I-PER", "I-PER", "O", "I-LOC", "B-PER", "I-LOC", "I-LOC"]
    # conlleval: every stray I-X opens a span of type X
    assert ev.entity_spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("PER", 4, 5), ("LOC", 5, 7)]
    # strict: stray I- runs are dropped; only the B-PER span survives
    assert ev.entity_spans(tags, scheme="strict") == [("PER", 4, 5)]
    with pytest.raises(ValueError, match="'E-PER'"):
        ev.entity_spans(["E-PER"])


def test_entity_scores_adjacent_and_overlapping_spans():
    gold = [["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC", "I-LOC"],
            ["B-ORG", "O", "B-MISC"]]
    pred = [["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"],  # adjacent PERs merged; LOC too short
            ["B-ORG", "O", "B-ORG"]]  # right span, wrong type
    # gold spans: PER[0,2) PER[2,3) LOC[4,7) ORG[0,1) MISC[2,3)  -> 5
    # pred spans: PER[0,3) LOC[4,6) ORG[0,1) ORG[2,3)            -> 4, of which only ORG[0,1) is exact
    out = ev.entity_scores(gold, pred)
    assert (out["n_gold"], out["n_pred"], out["n_correct"]) == (5, 4, 1)
    assert out["precision"] == pytest.approx(1 / 4)
    assert out["recall"] == pytest.approx(1 / 5)
    assert out["f1"] == pytest.approx(2 * (1 / 4) * (1 / 5) / (1 / 4 + 1 / 5))
    assert ev.entity_f1(gold, pred) == out["f1"]
    assert out["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert out["per_type"]["PER"]["f1"] == 0.0
    assert out["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_entity_f1_nested_spans_are_not_credited():
    # BIO cannot express nesting: a prediction of the inner span only does not match the outer one
    gold = ["B-ORG", "I-ORG", "I-ORG", "O"]  # "University of Oslo"
    pred = ["B-ORG", "I-ORG", "B-LOC", "O"]  # "University of" + "Oslo"
    out = ev.entity_scores(gold, pred)  # a flat list is one sentence
    assert (out["n_gold"], out["n_pred"], out["n_correct"]) == (1, 2, 0)
    assert out["f1"] == 0.0
    assert ev.entity_f1(gold, gold) == 1.0


def test_entity_f1_spans_do_not_cross_sentences_and_strict_mode():
    gold = [["O", "B-PER"], ["I-PER", "O"]]
    pred = [["O", "B-PER"], ["B-PER", "O"]]
    # conlleval: the second sentence's stray I-PER is its own PER span, same as pred's B-PER
    assert ev.entity_f1(gold, pred) == 1.0
    # strict: gold has only the first PER; pred has two -> P = 1/2, R = 1
    assert ev.entity_f1(gold, pred, scheme="strict") == pytest.approx(2 / 3)


def test_entity_f1_empty_and_errors():
    assert ev.entity_f1([["O", "O"]], [["O", "O"]]) == 0.0  # no entities anywhere: 0 by convention
    with pytest.raises(ValueError, match="sentence 0 has 2 gold tags but 1"):
        ev.entity_f1([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="2 gold sentences"):
        ev.entity_f1([["O"], ["O"]], [["O"]])


# ---------------------------------------------------------------------------------------------
# perplexity
# ---------------------------------------------------------------------------------------------
def test_perplexity():
    assert ev.perplexity(0.0) == 1.0
    assert ev.perplexity(math.log(32)) == pytest.approx(32.0)  # uniform over 32 tokens
    assert ev.perplexity(1e4) == float("inf")
    # two batches: 3 tokens with mean loss 1.0, 1 token with loss 3.0 -> total 6 over 4 tokens
    assert ev.perplexity_from_losses(3 * 1.0 + 1 * 3.0, 4) == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError, match="n_tokens"):
        ev.perplexity_from_losses(1.0, 0)
    with pytest.raises(ValueError, match="NaN"):
        ev.perplexity(float("nan"))


def _pad_collate(items):
    import torch

    n = max(len(it["input_ids"]) for it in items)
    ids = torch.zeros((len(items), n), dtype=torch.long)  # (B, L)
    labels = torch.full((len(items), n), -100, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(items), n), dtype=torch.long)  # (B, L)
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(it["input_ids"]), torch.tensor(it["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def test_lm_perplexity_causal_equals_the_formula_per_sequence(tiny_llama):
    """exp(sum over every scored token of -log p(token | prefix) / number of scored tokens), with
    ragged, right-padded batches: each sequence scored alone, one position at a time."""
    import torch

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 32, (n,), generator=g).tolist() for n in (5, 9, 3, 7, 6)]
    examples = [{"input_ids": s, "labels": s} for s in seqs]
    total, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            logp = torch.log_softmax(tiny_llama(input_ids=torch.tensor([s])).logits[0], -1)  # (L, V)
            for t in range(1, len(s)):
                total -= float(logp[t - 1, s[t]])
                count += 1
    want = math.exp(total / count)
    for bs in (1, 2, 8):  # the batch size (and so the padding) does not change the value
        got = ev.lm_perplexity(tiny_llama, examples, _pad_collate, "causal", batch_size=bs)
        assert got == pytest.approx(want, rel=1e-5)


def test_lm_perplexity_masked_scores_only_labelled_positions(tiny_bert_factory):
    import torch

    model = tiny_bert_factory()
    ids = [[2, 7, 9, 11, 3], [2, 5, 3]]
    labels = [[-100, 7, -100, 11, -100], [-100, -100, 5]]
    examples = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels)]
    with torch.no_grad():
        lp0 = torch.log_softmax(model(input_ids=torch.tensor([ids[0]])).logits[0], -1)  # (5, V)
        lp1 = torch.log_softmax(model(input_ids=torch.tensor([ids[1]])).logits[0], -1)  # (3, V)
    want = math.exp(-(float(lp0[1, 7]) + float(lp0[3, 11]) + float(lp1[2, 5])) / 3)
    assert ev.lm_perplexity(model, examples, _pad_collate, "masked", batch_size=2) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="kind"):
        ev.lm_perplexity(model, examples, _pad_collate, "seq2seq")
    with pytest.raises(ValueError, match="n_tokens must be positive"):  # nothing scored: no perplexity
        ev.lm_perplexity(model, [{"input_ids": [2, 3], "labels": [-100, -100]}], _pad_collate, "masked")
