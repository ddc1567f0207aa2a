"""``adaptome protein score-mutations`` and ``adaptome protein evaluate`` (registered on ``cli.app``): the
commands that judge a model, mutation effects against BLOSUM62 and a held-out report against baselines. The
same rules as ``cli``: one-line errors naming the file, outputs never replaced without ``--overwrite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adaptome.core.cli_errors import fail, user_errors


def score_mutations_cmd(
    model: str = typer.Option(..., help="causal LM or ESM-style masked LM: folder or hub id"),
    mutants: Optional[Path] = typer.Option(None, help="CSV with a mutant column (e.g. H24C); default: shipped TEM-1"),
    wildtype: Optional[str] = typer.Option(None, help="wild-type FASTA file or the sequence itself (with --mutants)"),
    offset: Optional[int] = typer.Option(None, help="position p is residue p - offset of the wild type "
                                         "(default 0; shipped TEM-1: 24)"),
    mutant_column: str = typer.Option("mutant"),
    fitness_column: Optional[str] = typer.Option(None, help="measured fitness column -> Spearman"),
    out: Path = typer.Option(..., help="output CSV"), overwrite: bool = typer.Option(False),
) -> None:
    """Score mutants (higher = the model prefers the mutant) -> CSV with the BLOSUM62 baseline; Spearman of
    both against measured fitness when it is given.

    A causal LM scores NLL(wild type) - NLL(mutant); an ESM-style masked LM scores masked marginals as
    ESM-1v, log p(mutant) - log p(wild type) at the masked position, a multi-mutant (A24C:G50T) the sum
    of its single effects.

    Example: adaptome protein score-mutations --model runs/protein/stage1_tiny/merged --out tem1_scores.csv

    Example: adaptome protein score-mutations --model facebook/esm2_t6_8M_UR50D --out tem1_esm_scores.csv
    """
    import csv

    from adaptome.core.atomic import atomic_file
    from adaptome.domains.protein import data
    from adaptome.domains.protein.cli import _check_new
    from adaptome.domains.protein.model import is_masked_lm, load_masked_lm, load_model_and_tokenizer
    from adaptome.domains.protein.mutations import (
        blosum62_scores,
        check_mutants,
        paired_spearman,
        read_mutants_csv,
        read_wildtype,
        score_mutants,
    )

    _check_new(out, overwrite)
    with user_errors():
        if mutants is None:
            if wildtype is not None or fitness_column is not None:
                fail("--wildtype and --fitness-column go with --mutants (without it the shipped TEM-1 scan is scored)")
            wt, tem1_offset, rows = data.tem1()
            if offset not in (None, tem1_offset):
                fail(f"--offset {offset}: the shipped TEM-1 scan numbers residues with offset {tem1_offset}")
            offset = tem1_offset
            muts, fit = [r[0] for r in rows], [r[1] for r in rows]
        else:
            if wildtype is None:
                fail("give --wildtype with --mutants")
            muts, fit = read_mutants_csv(mutants, mutant_column, fitness_column)
            notes: list[str] = []
            wt = read_wildtype(wildtype, notes)
            for note in notes:
                typer.echo(note)
            offset = offset or 0
            check_mutants(wt, muts, offset, [f"{mutants}:{i}" for i in range(2, len(muts) + 2)])
        masked = is_masked_lm(model)
        m, tok = load_masked_lm(model) if masked else load_model_and_tokenizer(model)
        if masked:
            from adaptome.domains.protein.esm_mutations import residue_window

            window = residue_window(m, tok)
            if window is not None and len(wt) > window:
                typer.echo(f"note: the wild type has {len(wt)} residues, more than {model} reads at once "
                           f"(max_position_embeddings): each site is scored in a window of {window} residues around "
                           "it, so the context differs from site to site")
        scores = score_mutants(m, tok, wt, muts, offset, progress=True)
        blosum = blosum62_scores(muts)

        with atomic_file(out) as f:
            w = csv.writer(f)
            w.writerow(["mutant", "score", "blosum62"] + (["fitness"] if fit else []))
            for i, (mu, sc) in enumerate(zip(muts, scores)):
                w.writerow([mu, f"{sc:.6f}", f"{blosum[i]:g}"] + (["" if fit[i] is None else fit[i]] if fit else []))
        rho = paired_spearman(scores, blosum, fit) if fit else None
    how = "masked marginals, multi-mutants summed" if masked else "NLL(wild type) - NLL(mutant)"
    msg = f"{len(muts)} mutants scored by {how} -> {out}"
    if rho is not None:
        left = [f"{k} {what}" for k, what in ((rho["no_fitness"], "without a fitness value"),
                                               (rho["nonfinite_score"], "with a non-finite model score")) if k]
        left_s = f"; left out of both: {', '.join(left)}" if left else ""
        if rho["model"] is None:
            msg += f"\nSpearman vs measured fitness: not computed, {rho['n']} mutant(s) with a value{left_s}"
        else:
            msg += (f"\nSpearman vs measured fitness: model {rho['model']:.3f}, BLOSUM62 baseline "
                    f"{rho['baseline']:.3f} (same {rho['n']} of {len(muts)} mutants{left_s})")
    typer.echo(msg)


def _held_out_check(model: str, test: list, where: str) -> dict:
    """How many of the ``test`` records (those ``evaluate`` holds out of the reference) the model was trained
    on, by the fingerprints of its ``training_data.json``; prints one line when any, or when it cannot tell.
    Returns the report's ``held_out`` entry: ``n``, ``n_trained_on`` (None: not recorded)."""
    from adaptome.domains.protein.training_data import FILE, read_training_data, trained_on

    prints = (read_training_data(model) or {}).get("sequence_sha1")
    if prints is None:
        typer.echo(f"note: {model} records no training-sequence fingerprints ({FILE}); cannot check that the "
                   f"{len(test)} held-out reference sequences were not trained on")
        return {"n": len(test), "n_trained_on": None}
    seen = sum(trained_on([r.seq for r in test], prints))
    if seen:
        typer.echo(f"warning: {seen} of the {len(test)} held-out sequences of the reference ({where}) are among "
                   f"those {model} was trained on ({FILE}): perplexity and classification are not held-out; give "
                   "a reference of sequences the model never saw")
    return {"n": len(test), "n_trained_on": seen}


def _check_hold_out(recs: list, where: str, n_test: int = 3) -> None:
    """Refuse, naming the reference, a label with too few records to hold ``n_test`` out and keep one."""
    from collections import Counter

    small = sorted((n, lab) for lab, n in Counter(r.label for r in recs).items() if n <= n_test)
    if small:
        n, lab = small[0]
        more = f" (and {len(small) - 1} more label(s) with {n_test} or fewer)" if len(small) > 1 else ""
        fail(f"{where}: label {lab!r} has {n} record(s){more}; evaluate holds {n_test} per label out for perplexity "
             f"and classification and needs one more to train the baselines: give at least {n_test + 1} per label, "
             "or leave that label out")


def evaluate_cmd(
    model: str = typer.Option(..., help="instruction-tuned merged checkpoint"),
    shipped: Optional[str] = typer.Option(None, help="labelled set when no --reference: pfam | ec (split 3 per "
                                          "label, seed 0; default pfam)"),
    reference: list[Path] = typer.Option([], help="labelled real sequences instead of --shipped (repeatable): "
                                         "Stockholm (label: #=GF ID) or FASTA (label: a Key=<label> header "
                                         "field, as build-dataset writes, or --reference-labels)"),
    reference_labels: Optional[Path] = typer.Option(None, help="CSV/TSV id,label table for --reference FASTA"),
    id_column: str = typer.Option("id"), label_column: str = typer.Option("label"),
    policy: str = typer.Option("error", help="non-standard residues in --reference: error | skip | keep"),
    task_name: Optional[str] = typer.Option(None, help="label kind (default: family for pfam and --reference, "
                                            "enzyme class for ec)"),
    task_key: str = typer.Option(""),
    samples: Optional[Path] = typer.Option(None, help="generated FASTA written by `sample`"),
    method: str = typer.Option("", help="classification: combined | determine | bayes | generate | probe "
                               "(default: the measured best, as classify)"),
    max_residues: int = typer.Option(128, help="crop held-out sequences for perplexity and classification "
                                     "(generation is compared with whole sequences)"),
    out: Path = typer.Option(..., help="report folder"),
    overwrite: bool = typer.Option(False),
    esmfold: Optional[str] = typer.Option(None, help="ESMFold checkpoint (folder or hub id): pLDDT of the samples"),
    reference_pdbs: Optional[Path] = typer.Option(None, help="folder of reference PDB files: Foldseek TM-score"),
) -> None:
    """Report (JSON + Markdown): perplexity, classification vs baselines, generated-set metrics (length
    KS test, low-complexity share, per label) and, with --esmfold (and --reference-pdbs with foldseek on
    PATH), structure metrics of the samples. Samples conditioned on a label the reference does not hold
    are refused. Perplexity and classification run on 3 sequences per label split off the reference; when
    the model's training_data.json shows it was trained on some of them (as on build-dataset's own
    sequences.fasta), that is said and the report does not call those metrics held-out.

    Example: adaptome protein evaluate --model runs/protein/stage2_tiny/merged --samples gen.fasta \\
        --reference runs/protein/data/sequences.fasta --task-name superfamily --out runs/protein/report
    """
    from adaptome.domains.protein import classify, data, evaluate
    from adaptome.domains.protein.cli import _check_new, _task
    from adaptome.domains.protein.model import load_model_and_tokenizer

    _check_new(out, overwrite)
    with user_errors():
        if reference and shipped is not None:
            fail(f"--reference and --shipped {shipped} both name the labelled set; give one of them")
        shipped = shipped or "pfam"
        if reference:
            skipped: list[str] = []
            recs = evaluate.read_reference(reference, reference_labels, id_column, label_column, policy, skipped)
            if skipped:
                typer.echo(f"note: --reference: {len(skipped)} record(s) with non-standard residues skipped "
                           f"(--policy skip), e.g. {skipped[0]!r}")
            if not recs:
                fail(f"--reference: no record left to use (--policy {policy})")
            task, where = _task(task_name or "family", task_key), ", ".join(map(str, reference))
        elif policy != "error":
            fail("--policy applies to --reference files; the shipped sets hold standard residues only")
        elif shipped == "pfam":
            task, recs, where = data.FAMILY, data.pfam_families(), "shipped Pfam seeds"
        elif shipped == "ec":
            task, recs, where = data.EC_CLASS, data.ec_records(), "shipped nrPDB-EC subset"
        else:
            fail(f"--shipped {shipped!r}: known: pfam, ec")
        if task_name and not reference:
            task = _task(task_name, task_key)
        gen = evaluate.read_samples(samples) if samples is not None else None
        if gen is not None:
            evaluate.check_sample_labels(gen, [r.label for r in recs])
        _check_hold_out(recs, where)
        train, test = data.split_by_label(recs, 3)
        overlap = _held_out_check(model, test, where)
        train_c, test_c = data.crop(train, max_residues), data.crop(test, max_residues)
        labels = sorted({r.label for r in train})
        m, tok = load_model_and_tokenizer(str(model))
        report = {"model": str(model), "reference": where, "task": task.name, "held_out": overlap,
                  "perplexity": evaluate.perplexity_on(m, tok, [r.seq for r in test_c]),
                  "n_perplexity_sequences": len(test_c)}
        method = method or classify.DEFAULT_METHOD
        preds = classify.classify(m, tok, task, [r.seq for r in test_c], labels, method, progress=True,
                                  train=train_c)
        report["classification"] = {**evaluate.classification_report(
            [r.label for r in test_c], [p["pred"] for p in preds], train_c, [r.seq for r in test_c]),
            "method": method}
        if gen is not None:
            report["generation"] = evaluate.generation_report(gen, train, recs)
            from adaptome.core.train.identity import weights_digest

            report["sampling"] = evaluate.sample_settings(samples, str(model), weights_digest(m)[:16])
            for note in report["sampling"]["notes"]:
                typer.echo(note)
        import tempfile

        from adaptome.domains.protein import structure

        pdb_dir = Path(tempfile.mkdtemp(prefix="adaptome-structures-")) if esmfold and samples else None
        # only samples of standard residues can be folded (flagged ones are counted in validity)
        foldable = [(f"sample{i}", g.seq) for i, g in enumerate(gen or []) if not g.invalid]
        names, seqs = [n for n, _ in foldable], [x for _, x in foldable]
        report["structure"] = structure.structure_report(seqs, names, esmfold if samples else None,
                                                         reference_pdbs, pdb_dir)
        evaluate.write_report(report, out, overwrite, structures=pdb_dir)
    typer.echo(evaluate.markdown(report))
