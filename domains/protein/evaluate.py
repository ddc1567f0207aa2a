"""The evaluator: a JSON + Markdown report on a model and, optionally, a generated set.

* **perplexity** on held-out sequences: exp of the mean token NLL of ``Seq=<...></s>``;
* **classification accuracy** of the model (``classify.classify``) beside two baselines fitted on
  the training side: the majority class and k-mer logistic regression (``kmer.py``);
* for a **generated set**: validity (closing ``>`` produced, non-empty, only standard residues);
  length distribution vs the reference (two-sample Kolmogorov-Smirnov statistic and p-value);
  amino-acid composition divergence (Jensen-Shannon divergence, base 2, of the pooled 20-residue
  frequencies); diversity (mean pairwise identity within the set, lower is more diverse); novelty
  (for each sequence the highest identity to any training sequence; reported as the mean, and
  novelty = 1 - mean); **control accuracy**: a k-mer classifier fitted on all real labelled
  sequences predicts each conditional sample's class, compared with the requested label (empty
  samples count as misses), beside chance = 1 / number of classes.

Identity of two sequences: a global alignment with Biopython's ``PairwiseAligner`` (BLOSUM62, gap
open -10, extend -0.5); identical aligned pairs / length of the shorter sequence.
Structure metrics (ESMFold pLDDT, Foldseek TM-score) come from ``structure.py``: they run when a
model path / the ``foldseek`` command is given, otherwise the report says why they were skipped.
Not covered: HHblits H-Prob, SC-Perp.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from adaptome.domains.protein.formats import STANDARD_AA, Record, seq_line


def perplexity_on(model, tok, seqs: list[str], batch_size: int = 16) -> float:
    from adaptome.domains.protein.classify import score_targets

    scored = score_targets(model, tok, [("", seq_line(s)) for s in seqs], batch_size)
    total = -sum(lp for lp, _ in scored)
    n = sum(k for _, k in scored)
    return math.exp(total / n)


def classification_report(y_true: list[str], y_model: list[str], train: list[Record],
                          test_seqs: list[str], k: int = 3) -> dict[str, Any]:
    """Model accuracy beside the majority-class and k-mer logistic-regression baselines."""
    from adaptome.core.evaluation import accuracy
    from adaptome.domains.protein.kmer import KmerClassifier

    majority = Counter(r.label for r in train).most_common(1)[0][0]
    km = KmerClassifier(k).fit([r.seq for r in train], [r.label for r in train])
    return {
        "n_test": len(y_true),
        "n_classes": len(set(r.label for r in train)),
        "model_accuracy": accuracy(y_true, y_model),
        "majority_class": majority,
        "majority_accuracy": accuracy(y_true, [majority] * len(y_true)),
        "kmer_lr_accuracy": accuracy(y_true, km.predict(test_seqs)),
    }


def _aligner():
    from Bio import Align
    from Bio.Align import substitution_matrices

    al = Align.PairwiseAligner(mode="global")
    al.substitution_matrix = substitution_matrices.load("BLOSUM62")
    al.open_gap_score, al.extend_gap_score = -10.0, -0.5
    return al


def identity(a: str, b: str, aligner=None) -> float:
    """Identical aligned pairs / length of the shorter sequence (0 when either is empty)."""
    if not a or not b:
        return 0.0
    al = aligner or _aligner()
    a2, b2 = (re.sub(f"[^{STANDARD_AA}]", "X", x) for x in (a, b))  # flagged letters align as X
    return al.align(a2, b2)[0].counts().identities / min(len(a), len(b))


def composition(seqs: list[str]):
    import numpy as np

    c = Counter(ch for s in seqs for ch in s if ch in STANDARD_AA)
    v = np.array([c[a] for a in STANDARD_AA], dtype=float)
    return v / max(v.sum(), 1.0)


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits: 0 for equal, 1 for disjoint distributions."""
    import numpy as np

    p, q = np.asarray(p, float), np.asarray(q, float)
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def generation_report(samples, train: list[Record], all_real: list[Record], k: int = 3,
                      max_pairs: int = 2000) -> dict[str, Any]:
    """Metrics of a generated set (``sample.Sample`` objects) against real sequences."""
    from scipy.stats import ks_2samp

    from adaptome.domains.protein.kmer import KmerClassifier

    seqs = [s.seq for s in samples]
    nonempty = [s for s in seqs if s]
    ref = [r.seq for r in train]
    out: dict[str, Any] = {"n_generated": len(samples),
                           "validity": sum(s.valid for s in samples) / max(len(samples), 1),
                           "mean_length": sum(map(len, seqs)) / max(len(seqs), 1),
                           "reference_mean_length": sum(map(len, ref)) / len(ref)}
    if len(nonempty) >= 1:
        ks = ks_2samp([len(s) for s in nonempty], [len(s) for s in ref])
        out["length_ks_statistic"], out["length_ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
        out["composition_js_divergence"] = js_divergence(composition(nonempty), composition(ref))
        al = _aligner()
        pairs = list(itertools.combinations(range(len(nonempty)), 2))[:max_pairs]
        out["diversity_mean_pairwise_identity"] = (
            sum(identity(nonempty[i], nonempty[j], al) for i, j in pairs) / len(pairs) if pairs else None)
        best = [max(identity(s, r, al) for r in ref) for s in nonempty]
        out["novelty_mean_max_identity_to_train"] = sum(best) / len(best)
        out["novelty"] = 1.0 - out["novelty_mean_max_identity_to_train"]
    cond = [s for s in samples if s.label is not None]
    if cond:
        judge = KmerClassifier(k).fit([r.seq for r in all_real], [r.label for r in all_real])
        preds = judge.predict([s.seq for s in cond])
        hits = [bool(s.seq) and p == s.label for s, p in zip(cond, preds)]
        per: dict[str, list[bool]] = {}
        for s, h in zip(cond, hits):
            per.setdefault(s.label, []).append(h)
        out["control_accuracy"] = sum(hits) / len(hits)
        out["control_chance"] = 1.0 / len(judge.classes)
        out["control_per_label"] = {lab: sum(v) / len(v) for lab, v in sorted(per.items())}
    return out


def markdown(report: dict[str, Any]) -> str:
    """A readable Markdown rendering of the report (numbers to 3 decimals)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["# Protein model evaluation", ""]
    if "perplexity" in report:
        lines += [f"Held-out perplexity (``Seq=<...>`` lines, stage-1 model): **{fmt(report['perplexity'])}** "
                  f"(on {report.get('n_perplexity_sequences', '?')} sequences)", ""]
        if "perplexity_stage2" in report:
            lines += [f"Same sequences under the instruction-tuned model: {fmt(report['perplexity_stage2'])}", ""]
    c = report.get("classification")
    if c:
        lines += ["## Classification (held-out)", "", "| predictor | accuracy |", "|---|---|",
                  f"| model ({c.get('method', 'determine')}) | {fmt(c['model_accuracy'])} |",
                  *([f"| model (p(seq \\| label), uniform prior) | {fmt(c['bayes_accuracy'])} |"]
                    if "bayes_accuracy" in c else []),
                  f"| majority class ({c['majority_class']}) | {fmt(c['majority_accuracy'])} |",
                  f"| k-mer logistic regression | {fmt(c['kmer_lr_accuracy'])} |", "",
                  f"{c['n_test']} test sequences, {c['n_classes']} classes.", ""]
    g = report.get("generation")
    if g:
        lines += ["## Generated set", "", "| metric | value |", "|---|---|"]
        for k in ("n_generated", "validity", "mean_length", "reference_mean_length", "length_ks_statistic",
                  "length_ks_pvalue", "composition_js_divergence", "diversity_mean_pairwise_identity",
                  "novelty_mean_max_identity_to_train", "novelty", "control_accuracy", "control_chance"):
            if k in g:
                lines.append(f"| {k} | {fmt(g[k])} |")
        lines.append("")
        if c and "control_accuracy" in g:
            lines += [f"The control judge is a k-mer classifier like the baseline above; its held-out accuracy on "
                      f"real sequences ({fmt(c['kmer_lr_accuracy'])}) bounds how far control accuracy can be trusted.", ""]
        if "control_per_label" in g:
            lines += ["Control accuracy per requested label: " +
                      ", ".join(f"{k} {fmt(v)}" for k, v in g["control_per_label"].items()), ""]
    s = report.get("structure")
    if s:
        lines += ["## Structure metrics", ""]
        for k, v in s.items():
            if isinstance(v, dict):  # a metric that ran: its summary, not the per-sequence table
                summary = ", ".join(f"{kk} {fmt(vv)}" for kk, vv in v.items() if kk != "per_sequence")
                lines.append(f"- {k}: {summary}")
            else:
                lines.append(f"- {k}: {v}")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path, overwrite: bool = False,
                 structures: str | Path | None = None) -> Path:
    """``report.json`` + ``report.md`` (and the predicted ``structures/``) in ``out_dir``, atomically."""
    from adaptome.core.atomic import atomic_dir

    with atomic_dir(Path(out_dir), overwrite) as tmp:
        if structures is not None and Path(structures).is_dir():
            shutil.move(str(structures), str(tmp / "structures"))
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        (tmp / "report.md").write_text(markdown(report), encoding="utf-8")
    return Path(out_dir)
