"""The evaluator: a JSON + Markdown report on a model and, optionally, a generated set.

* **perplexity** on held-out sequences: exp of the mean token NLL of ``Seq=<...></s>`` after
  ``<s>`` (core's ``evaluation.lm_perplexity``);
* **classification accuracy** of the model (``classify.classify``) beside two baselines fitted on
  the training side: the majority class and k-mer logistic regression (``kmer.py``);
* for a **generated set**: validity (closing ``>`` produced, non-empty, only standard residues);
  length distribution vs the reference (two-sample Kolmogorov-Smirnov statistic and p-value);
  amino-acid composition divergence (Jensen-Shannon divergence, base 2, of the pooled 20-residue
  frequencies); diversity (mean pairwise identity within the set, lower is more diverse); novelty
  (for each sequence the highest identity to any training sequence; reported as the mean, and
  novelty = 1 - mean); **low-complexity share** (``lowcomplexity.py``, SEG's trigger windows) of
  samples and reference and their ratio; **per requested label**: sample vs real lengths (mean and
  KS test against that label's real sequences) and low-complexity shares; **control accuracy**: a
  k-mer classifier fitted on all real labelled sequences predicts each conditional sample's class,
  compared with the requested label (empty samples count as misses), beside chance = 1 / number of
  classes. A sample label outside the judge's label set is refused (``ForeignLabelError``): such
  samples would score 0 without being wrong, so the caller must pass the real sequences of that label.

Identity of two sequences: a global alignment with Biopython's ``PairwiseAligner`` (BLOSUM62, gap
open -10, extend -0.5); identical aligned pairs / length of the shorter sequence.
Structure metrics (ESMFold pLDDT, Foldseek TM-score) come from ``structure.py``: they run when a
model path / the ``foldseek`` command is given, otherwise the report says why they were skipped.
Not covered: HHblits H-Prob, SC-Perp.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from adaptome.domains.protein.formats import STANDARD_AA, LabelError, Record, seq_line


class ForeignLabelError(LabelError):
    """Samples were conditioned on labels that the reference (the judge's label set) does not hold."""


def read_reference(paths: list[Path], label_table: Path | None = None, id_column: str = "id",
                   label_column: str = "label", policy: str = "error",
                   skipped: list[str] | None = None) -> list[Record]:
    """Labelled real sequences from Stockholm files (every alignment of the file, each labelled by its
    ``#=GF ID``; told apart by ``formats.is_stockholm``) and FASTA files (label: the table's, else a
    ``Key=<label>`` field in the header, as ``build-dataset`` writes ``sequences.fasta``). A record without
    a label is an error naming the file. ``policy``: the residue policy (``formats.clean_sequence``); the ids of
    records it skips are appended to ``skipped``."""
    from adaptome.domains.protein.data import attach_labels, read_label_table
    from adaptome.domains.protein.formats import FormatError, is_stockholm, read_fasta_headers, read_stockholm_families

    table = read_label_table(label_table, id_column, label_column) if label_table else None
    out: list[Record] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FormatError(f"{path}: reference file not found")
        if is_stockholm(path):  # every alignment of the file, each labelled by its #=GF ID
            recs = [r for fam in read_stockholm_families(path, policy, skipped=skipped) for r in fam.records]
        else:
            from adaptome.domains.protein.formats import clean_sequence

            recs = []
            for header, raw in read_fasta_headers(path):
                rid, _, desc = header.partition(" ")
                m = re.search(r"\b[A-Za-z][A-Za-z0-9_]*=<([^>]*)>", desc)
                seq = clean_sequence(raw, policy, f"{path}: record {rid!r}")
                if seq is None:
                    if skipped is not None:
                        skipped.append(rid)
                    continue
                recs.append(Record(rid, seq, m.group(1) if m else None))
        if table is not None:
            recs = attach_labels(recs, table, str(label_table))
        missing = [r.id for r in recs if r.label is None]
        if missing:
            raise FormatError(f"{path}: {len(missing)} record(s) without a label, e.g. {missing[0]!r} (give "
                              "--reference-labels, or Key=<label> in the FASTA headers)")
        out += recs
    return out


def read_samples(path: str | Path) -> list:
    """``sample.Sample`` objects back from a FASTA written by ``sample`` (condition from the header); a
    condition that is not ``unconditional`` or ``Key=<label>`` is a ``FormatError`` naming the file and record.
    A file cut mid-record is a ``FormatError`` too: its last line has no line break (``sample`` ends every line
    with one), or a record holds another number of residues than its header's ``length=`` says."""
    from adaptome.domains.protein.formats import FormatError, invalid_positions, parse_field, read_fasta_headers
    from adaptome.domains.protein.sample import Sample, parse_header

    out = []
    records = read_fasta_headers(path)
    with Path(path).open("rb") as f:  # read_fasta_headers checked it is a non-empty file
        f.seek(-1, os.SEEK_END)
        cut = f.read(1) not in (b"\n", b"\r")
    if cut:
        raise FormatError(f"{path}: ends mid-line, in sample {parse_header(records[-1][0])['id']!r} (sample writes "
                          "a line break after every line): the file was cut; write it again with `adaptome protein "
                          "sample`")
    for h, seq in records:
        meta = parse_header(h)
        if meta.get("length", "").isdigit() and int(meta["length"]) != len(seq):
            raise FormatError(f"{path}: sample {meta['id']!r} holds {len(seq)} residues, its header says "
                              f"length={meta['length']}: the file was cut or edited; write it again with `adaptome "
                              "protein sample`")
        where = f"{path}: sample {meta['id']!r} condition"
        lab = parse_field(meta["condition"], source=where)[1] if meta["condition"] != "unconditional" else None
        out.append(Sample(meta["condition"], lab, "", seq, meta.get("complete") == "yes",
                          tuple(invalid_positions(seq)), 0))
    return out


def _same_model(a: str, b: str) -> bool:
    """The same folder (resolved) or the same hub id."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def sample_settings(path: str | Path, model: str, weights: str | None = None) -> dict[str, Any]:
    """How the samples of a FASTA written by ``sample`` were drawn, from its headers: ``settings``, the distinct
    sampling settings (``SamplingParams`` fields and the prefix, values as written), ``models``, the models the
    headers name, ``length_prior`` (any sample's length drawn from the training lengths), and ``notes``, the
    lines ``evaluate`` prints and the report shows: no settings recorded, several settings pooled, lengths from
    the length prior (the length KS test then measures the prior, not the model), samples of a model other than
    ``model``, and samples of ``model`` when it held other weights than ``weights`` (its ``weights_digest`` now:
    retrained or replaced in place since they were drawn; headers without ``model_weights`` are not checked)."""
    from dataclasses import fields

    from adaptome.domains.protein.formats import read_fasta_headers
    from adaptome.domains.protein.sample import SamplingParams, parse_header

    keys = [f.name for f in fields(SamplingParams)]
    settings: list[dict[str, str]] = []
    models: list[str] = []
    stale: set[str] = set()
    for h, _ in read_fasta_headers(path):
        meta = parse_header(h)
        if weights and meta.get("model_weights") and meta["model_weights"] != weights \
                and _same_model(meta.get("model", ""), model):
            stale.add(meta["model_weights"])
        s = {k: meta[k] for k in keys if k in meta}
        if s:
            s["prefix"] = meta.get("prefix", "-")
            if s not in settings:
                settings.append(s)
        if meta.get("model") and meta["model"] not in models:
            models.append(meta["model"])
    prior = any(s.get("length_prior") == "True" for s in settings)
    notes = []
    if not settings:
        notes.append(f"note: {path}: the sample headers record no sampling settings (written by `adaptome protein "
                     "sample`, they do); the report cannot say how the samples were drawn")
    elif len(settings) > 1:
        notes.append(f"note: {path} holds samples of {len(settings)} sampling settings; the generation metrics pool "
                     "them")
    if prior:
        notes.append(f"warning: {path}: samples drawn with the length prior (length_prior=True): their lengths were "
                     "drawn from the training lengths, not the model's, so the length KS test measures the length "
                     "prior, not the model")
    other = [m for m in models if not _same_model(m, model)]
    if other:
        notes.append(f"warning: the samples were drawn from {', '.join(other)}, not from --model {model}: the "
                     "generation metrics describe those samples, the rest of the report this model")
    if stale:
        notes.append(f"warning: {path}: the samples were drawn from {model} when it held other weights "
                     f"(model_weights {', '.join(sorted(stale))}, now {weights}): it was retrained or replaced since, "
                     "so the generation metrics describe the old model's samples; sample again to evaluate this one")
    return {"settings": settings, "models": models, "length_prior": prior, "notes": notes}


def perplexity_on(model, tok, seqs: list[str], batch_size: int = 16) -> float:
    """Perplexity of ``<s>Seq=<...></s>`` lines: every token after ``<s>`` is scored."""
    from adaptome.core.evaluation import lm_perplexity
    from adaptome.domains.protein.instruct import pad_collate
    from adaptome.domains.protein.tokenizer import encode

    examples = []
    for s in seqs:
        ids = encode(tok, "", bos=True) + encode(tok, seq_line(s), bos=False) + [tok.eos_token_id]
        examples.append({"input_ids": ids, "labels": ids})
    return lm_perplexity(model, examples, pad_collate(tok.pad_token_id), "causal", batch_size)


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


def length_ks(sample_seqs: list[str], real_seqs: list[str]) -> dict[str, float]:
    """Two-sample Kolmogorov-Smirnov test of the residue counts (scipy ``ks_2samp``, two-sided)."""
    from scipy.stats import ks_2samp

    ks = ks_2samp([len(s) for s in sample_seqs], [len(s) for s in real_seqs])
    return {"length_ks_statistic": float(ks.statistic), "length_ks_pvalue": float(ks.pvalue)}


def per_label_report(samples, all_real: list[Record]) -> dict[str, dict[str, Any]]:
    """Per requested label: sample count, mean lengths, KS test of lengths against the label's real
    sequences, low-complexity share of samples and real sequences and their ratio."""
    from adaptome.domains.protein.lowcomplexity import low_complexity_share

    out: dict[str, dict[str, Any]] = {}
    for lab in sorted({s.label for s in samples if s.label is not None}):
        gen = [s.seq for s in samples if s.label == lab and s.seq]
        real = [r.seq for r in all_real if r.label == lab]
        row: dict[str, Any] = {"n_samples": sum(s.label == lab for s in samples), "n_nonempty": len(gen),
                               "n_real": len(real), "real_mean_length": sum(map(len, real)) / len(real),
                               "real_low_complexity_share": low_complexity_share(real)}
        if gen:
            lc = low_complexity_share(gen)
            row.update(mean_length=sum(map(len, gen)) / len(gen), **length_ks(gen, real), low_complexity_share=lc,
                       low_complexity_ratio=lc / row["real_low_complexity_share"]
                       if row["real_low_complexity_share"] else None)
        out[lab] = row
    return out


def check_sample_labels(samples, real_labels) -> None:
    """``ForeignLabelError`` when a sample's label is not among ``real_labels``."""
    known = sorted(set(real_labels))
    foreign = sorted({s.label for s in samples if s.label is not None and s.label not in known})
    if foreign:
        raise ForeignLabelError(
            f"{len(foreign)} sample label(s) not in the reference label set, e.g. {foreign[0]!r} (reference: "
            f"{', '.join(known[:20])}{' ...' if len(known) > 20 else ''}); give the real sequences of those labels "
            "as the reference (evaluate --reference FILE)")


def generation_report(samples, train: list[Record], all_real: list[Record], k: int = 3,
                      max_pairs: int = 2000) -> dict[str, Any]:
    """Metrics of a generated set (``sample.Sample`` objects) against real sequences: ``train`` for
    lengths, composition and novelty, ``all_real`` (labelled) for the judge and the per-label rows."""
    from adaptome.domains.protein.kmer import KmerClassifier
    from adaptome.domains.protein.lowcomplexity import low_complexity_share

    check_sample_labels(samples, [r.label for r in all_real])
    seqs = [s.seq for s in samples]
    nonempty = [s for s in seqs if s]
    ref = [r.seq for r in train]
    out: dict[str, Any] = {"n_generated": len(samples),
                           "validity": sum(s.valid for s in samples) / max(len(samples), 1),
                           "mean_length": sum(map(len, seqs)) / max(len(seqs), 1),
                           "reference_mean_length": sum(map(len, ref)) / len(ref)}
    out["reference_low_complexity_share"] = low_complexity_share(ref)
    if len(nonempty) >= 1:
        out.update(length_ks(nonempty, ref))
        out["low_complexity_share"] = low_complexity_share(nonempty)
        out["low_complexity_ratio"] = (out["low_complexity_share"] / out["reference_low_complexity_share"]
                                       if out["reference_low_complexity_share"] else None)
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
        out["per_label"] = per_label_report(cond, all_real)
    return out


def markdown(report: dict[str, Any]) -> str:
    """A readable Markdown rendering of the report (numbers to 3 decimals)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["# Protein model evaluation", ""]
    if "model" in report:
        lines += [f"Model: `{report['model']}`" + (f"; reference: {report['reference']}" if "reference" in report
                                                   else ""), ""]
    seen = (report.get("held_out") or {}).get("n_trained_on")
    held = "Held-out" if not seen else "Not held-out"
    if seen:
        lines += [f"**Not held-out**: the model was trained on {seen} of the {report['held_out']['n']} reference "
                  "sequences set aside for perplexity and classification (its `training_data.json`).", ""]
    elif seen is None and "held_out" in report:
        lines += ["The model records no training-sequence fingerprints: whether the test sequences were held out "
                  "of its training is unknown.", ""]
    if "perplexity" in report:
        who = report.get("perplexity_model", report.get("model", "the model"))
        lines += [f"{held} perplexity (``Seq=<...>`` lines) of `{who}`: **{fmt(report['perplexity'])}** "
                  f"(on {report.get('n_perplexity_sequences', '?')} sequences"
                  + (f", {seen} of them trained on)" if seen else ")"), ""]
        if "perplexity_stage2" in report:
            who2 = report.get("model", "the instruction-tuned model")
            lines += [f"Same sequences under `{who2}`: {fmt(report['perplexity_stage2'])}", ""]
    c = report.get("classification")
    if c:
        title = f"not held-out: {seen} test sequences trained on" if seen else "held-out"
        lines += [f"## Classification ({title})", "", "| predictor | accuracy |", "|---|---|",
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
                  "length_ks_pvalue", "low_complexity_share", "reference_low_complexity_share",
                  "low_complexity_ratio", "composition_js_divergence", "diversity_mean_pairwise_identity",
                  "novelty_mean_max_identity_to_train", "novelty", "control_accuracy", "control_chance"):
            if k in g:
                lines.append(f"| {k} | {fmt(g[k])} |")
        lines.append("")
        if c and "control_accuracy" in g:
            lines += [f"The control judge is a k-mer classifier like the baseline above; its held-out accuracy on "
                      f"real sequences ({fmt(c['kmer_lr_accuracy'])}) bounds how far control accuracy can be "
                      "trusted.", ""]
        if "control_per_label" in g:
            lines += ["Control accuracy per requested label: " +
                      ", ".join(f"{k} {fmt(v)}" for k, v in g["control_per_label"].items()), ""]
        if g.get("per_label"):
            lines += ["| label | samples | mean length (real) | length KS p | low-complexity share (real) |",
                      "|---|---|---|---|---|"]
            for lab, r in g["per_label"].items():
                lines.append(f"| {lab} | {r['n_samples']} | {fmt(r.get('mean_length', float('nan')))} "
                             f"({fmt(r['real_mean_length'])}) | {fmt(r.get('length_ks_pvalue', float('nan')))} | "
                             f"{fmt(r.get('low_complexity_share', float('nan')))} "
                             f"({fmt(r['real_low_complexity_share'])}) |")
            lines.append("")
    sm = report.get("sampling")
    if sm:
        # evaluate: the settings read from the sample headers; the quickstart: the one setting it sampled with
        settings = sm["settings"] if "settings" in sm else [sm]
        lines += ["## Sampling" + (" (from the sample headers)" if "settings" in sm else ""), ""]
        lines += [f"- {', '.join(f'{k}={v}' for k, v in s.items())}" for s in settings]
        lines += [f"- drawn from `{m}`" for m in sm.get("models", [])]
        lines += [f"- {note}" for note in sm.get("notes", [])]
        lines.append("")
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
