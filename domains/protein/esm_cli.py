"""What ``adaptome protein classify`` does with an ESM-style masked LM: read the files, train the
classifier (``esm_classify``) when training data is given, predict, and report the accuracy beside
the majority class and a 3-mer logistic-regression baseline trained on the same training records.

Not covered: a held-out split made here (give the test labels), reports written to disk (the
command prints them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptome.domains.protein.formats import ProteinError, Record


def _labelled(fasta: Path, table: Path, id_column: str, label_column: str, policy: str,
              lines: list[str]) -> list[Record]:
    from adaptome.domains.protein import data

    return data.attach_labels(_read(fasta, policy, lines), data.read_label_table(table, id_column, label_column),
                              str(table), seq_source=str(fasta))


def _read(fasta: Path, policy: str, lines: list[str]) -> list[Record]:
    """The records of ``fasta``; with ``skip``, a report line counts those left out (they get no prediction)."""
    from adaptome.domains.protein.formats import read_fasta

    skipped: list[str] = []
    recs = read_fasta(fasta, policy, skipped)
    if skipped:
        lines.append(f"note: {fasta}: {len(skipped)} record(s) with non-standard residues skipped (policy skip), "
                     f"e.g. {skipped[0]!r}")
    if not recs:
        raise ProteinError(f"{fasta}: the residue policy {policy} left no sequence")
    return recs


def resolve_policy(policy: str | None, cfg, default: str, where: str) -> str:
    """The residue policy of both the training and the query files: ``--policy`` when given, else the
    config's ``residue_policy``. An option that contradicts a ``residue_policy`` the user set (``--config`` /
    ``--set``, i.e. other than the shipped ``default``) is refused; the chosen policy is written into ``cfg``
    so that the saved config says what training read."""
    from adaptome.domains.protein.formats import POLICIES

    if policy is not None and policy not in POLICIES:
        raise ProteinError(f"--policy {policy!r}: known: {', '.join(POLICIES)}")
    if policy is not None and cfg.residue_policy not in (default, policy):
        raise ProteinError(f"--policy {policy} contradicts residue_policy {cfg.residue_policy} of {where}; "
                           "give one of them")
    cfg.residue_policy = policy or cfg.residue_policy
    return cfg.residue_policy


def classify_with_esm(model: str, fasta: Path, labels: Path | None, train_fasta: Path | None,
                      train_labels: Path | None, test_labels: Path | None, id_column: str, label_column: str,
                      policy: str | None, config: Path | None, overrides: list[str],
                      overwrite: bool) -> tuple[list[Record], list[dict[str, Any]], list[str]]:
    """(query records, predictions, report lines) for ``classify`` with an ESM model; ``policy`` (None: the
    config's ``residue_policy``) applies to ``fasta`` and ``train_fasta`` alike (``resolve_policy``)."""
    from adaptome.core.config import load_config, save_config
    from adaptome.domains.protein import data, esm_classify, evaluate
    from adaptome.domains.protein.formats import read_vocab

    if (train_fasta is None) != (train_labels is None):
        raise ProteinError("give --train-fasta and --train-labels together")
    # the shipped YAML is the default, not the dataclass alone: a ``--set train.x`` on a config without a
    # ``train`` section would rebuild that section from TrainConfig's own defaults
    shipped = Path(str(data.data_dir().parent / "configs" / "esm_classify.yaml"))
    cfg = load_config(esm_classify.EsmClassifyConfig, config or shipped, overrides)
    if train_fasta is None and (config is not None or overrides):
        raise ProteinError("--config / --set set up training; give --train-fasta and --train-labels too")
    policy = resolve_policy(policy, cfg, load_config(esm_classify.EsmClassifyConfig, shipped, []).residue_policy,
                            f"{config or shipped}" + (" with --set" if overrides else ""))
    lines: list[str] = []
    queries = _read(fasta, policy, lines)
    truth: dict[str, str] | None = None
    if test_labels is not None:  # checked before any training, which may take minutes
        if train_fasta is None:
            raise ProteinError("--test-labels needs --train-fasta / --train-labels: the baselines train on them")
        truth = {r.id: r.label for r in data.attach_labels(queries, data.read_label_table(test_labels, id_column,
                                                                                           label_column),
                                                           str(test_labels), seq_source=str(fasta))}
    train: list[Record] = []
    if train_fasta is not None:
        train = _labelled(train_fasta, train_labels, id_column, label_column, policy, lines)
        cands = read_vocab(labels) if labels else sorted({r.label for r in train})
        s = esm_classify.train_classifier(model, train, cands, cfg, overwrite)
        save_config(cfg, cfg.train.output_dir)
        m, tok = s["model"], s["tokenizer"]
        crop, limit = s["max_residues"], s["position_limit"]
        lines.append(f"trained {cfg.adapter.method} + head on {len(train)} sequences, {len(cands)} labels: "
                     f"{s['steps']} steps, loss {s.get('first_loss', float('nan')):.4f} -> "
                     f"{s.get('last_loss', float('nan')):.4f}, trainable {s['trainable']['percent']:.2f}%; "
                     f"adapter {s['adapter']}" + (f", merged {s['merged']}" if "merged" in s else ""))
        if s["replaced"]:  # --overwrite covers the predictions and the classifier alike: say so
            lines.append(f"note: --overwrite replaced the classifier in {cfg.train.output_dir}; --model "
                         "<that folder>/merged predicts with a saved classifier without training one")
    else:
        cands = esm_classify.trained_labels(model)
        if cands is None:
            raise ProteinError(f"{model}: an ESM masked LM without a trained classification head; give "
                               "--train-fasta and --train-labels to train one")
        if labels is not None and read_vocab(labels) != cands:
            raise ProteinError(f"{labels}: the labels differ from those {model} was trained on: {cands}")
        m, tok = esm_classify.load_classifier(model, cands, cfg.dtype)
    n_long = sum(len(r.seq) > crop for r in queries) if train_fasta is not None else 0
    if train_fasta is None:  # a saved classifier predicts with the crop it was trained with
        saved = esm_classify.trained_max_residues(model)
        crop, limit = esm_classify.position_crop(m, tok, saved or cfg.max_residues)
        n_long = sum(len(r.seq) > crop for r in queries)
        lines.append(f"{n_long} of {len(queries)} queries cropped to {crop} residues"
                     + (" (as the classifier was trained)" if saved and not limit else "")
                     + (f" (the model's max_position_embeddings {limit})" if limit else ""))
    else:
        n_train = sum(len(r.seq) > crop for r in train)
        if n_train or n_long:
            why = f"the model's max_position_embeddings {limit} allows no more" if limit else "max_residues"
            lines.append(f"{n_train} of {len(train)} training sequences and {n_long} of {len(queries)} queries cropped "
                         f"to {crop} residues, their N-terminal part ({why})")
    preds = esm_classify.predict(m, tok, [r.seq for r in queries], cands, crop, cfg.predict_batch_size)
    if truth is not None:
        rep = evaluate.classification_report([truth[r.id] for r in queries], [p["pred"] for p in preds], train,
                                             [r.seq for r in queries])
        lines.append(f"accuracy on {rep['n_test']} sequences: model {rep['model_accuracy']:.3f}, majority class "
                     f"({rep['majority_class']}) {rep['majority_accuracy']:.3f}, 3-mer logistic regression "
                     f"{rep['kmer_lr_accuracy']:.3f}")
    return queries, preds, lines
