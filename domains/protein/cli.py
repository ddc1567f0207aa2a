"""``adaptome protein ...``: build-dataset, pretrain, instruct, sample, classify, score-mutations,
evaluate. Thin: each command parses options, calls the library and prints a summary. Bad input is
a one-line error naming the file and the problem (exit code 2, ``core.cli_errors.user_errors``:
``AdaptomeError`` and ``OSError`` only, anything else is a bug and a traceback); existing outputs are
never replaced without ``--overwrite``, and every output appears whole or not at all
(``core.atomic``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adaptome.core.cli_errors import fail, user_errors

app = typer.Typer(help="ProLLaMA-style protein LM tuning, sampling, classification, mutation scoring.\n\n"
                  "Example: adaptome protein sample --model runs/protein/stage2/merged --label Cyclin_N -n 8",
                  no_args_is_help=True)

def _check_new(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        fail(f"{path}: already exists; pass --overwrite to replace it")


def _task(name: str, key: str):
    from adaptome.domains.protein.data import LabelTask

    return LabelTask(name, key)


def _candidates(path: Optional[Path], key: str, model_labels: list[str] | None = None) -> list[str]:
    from adaptome.domains.protein.formats import read_vocab

    if path is None:
        if model_labels:
            return model_labels
        fail("give --labels FILE (one label or Key=<label> per line)")
    return read_vocab(path, key if key else None)


@app.command("build-dataset")
def build_dataset(
    fasta: Optional[Path] = typer.Option(None, help="FASTA of the labelled sequences"),
    labels: Optional[Path] = typer.Option(None, help="CSV/TSV label table with a header row"),
    shipped: Optional[str] = typer.Option(None, help="use shipped data instead: pfam | ec"),
    id_column: str = typer.Option("id"), label_column: str = typer.Option("label"),
    task_name: str = typer.Option("superfamily", help="label kind used in the instructions"),
    task_key: str = typer.Option("", help="field name (default: task name capitalised)"),
    vocab: Optional[str] = typer.Option(None, help="vocabulary file, or 'superfamilies' for ProLLaMA's list"),
    policy: str = typer.Option("error", help="non-standard residues: error | skip | keep"),
    max_residues: Optional[int] = typer.Option(None, help="keep only the first N residues in the instructions "
                                               "(the stage-1 sequence files stay whole)"),
    out: Path = typer.Option(..., help="output folder (instructions.jsonl, sequences.txt)"),
    overwrite: bool = typer.Option(False),
) -> None:
    """Turn FASTA + a label table into ProLLaMA instruction JSONL and stage-1 ``Seq=<...>`` lines.

    Example: adaptome protein build-dataset --fasta seqs.fa --labels labels.csv --task-name superfamily --vocab
    superfamilies --out runs/protein/data
    """
    from adaptome.core.atomic import atomic_dir
    from adaptome.domains.protein import data, formats

    with user_errors():
        if shipped == "pfam":
            whole = data.pfam_families(policy=policy)
        elif shipped == "ec":
            whole = data.ec_records(policy=policy)
        elif shipped is not None:
            fail(f"--shipped {shipped!r}: known: pfam, ec")
        else:
            if fasta is None or labels is None:
                fail("give --fasta and --labels (or --shipped pfam|ec)")
            voc = None
            if vocab == "superfamilies":
                voc = data.superfamily_vocab()
            elif vocab:
                voc = formats.read_vocab(vocab)
            table = data.read_label_table(labels, id_column, label_column)
            whole = data.attach_labels(formats.read_fasta(fasta, policy), table, str(labels), voc)
        recs = data.crop(whole, max_residues)
        task = _task(task_name, task_key)
        with atomic_dir(out, overwrite) as tmp:
            formats.write_instructions(data.instruction_records(recs, task), tmp / "instructions.jsonl")
            # stage-1 files hold whole sequences: pretrain cuts windows with markers only at the real ends
            formats.write_seq_lines([r.seq for r in whole], tmp / "sequences.txt")
            formats.write_fasta(((f"{r.id} {task.label_field(r.label)}", r.seq) for r in whole),
                                tmp / "sequences.fasta")
    typer.echo(f"{len(recs)} sequences, {len({r.label for r in recs})} labels -> {out}")


def _stage(kind: str, config: Path, set_: list[str], overwrite: bool) -> None:
    from adaptome.core.config import load_config, save_config
    from adaptome.domains.protein.config import InstructConfig, PretrainConfig
    from adaptome.domains.protein.stages import run_stage_config

    cfg = load_config(PretrainConfig if kind == "pretrain" else InstructConfig, config, set_)
    s = run_stage_config(cfg, overwrite)
    save_config(cfg, cfg.train.output_dir)
    typer.echo(f"{kind}: {s['steps']} steps, loss {s.get('first_loss', float('nan')):.4f} -> "
               f"{s.get('last_loss', float('nan')):.4f}, trainable {s['trainable']['percent']:.2f}%; "
               f"adapter {s['adapter']}" + (f", merged {s['merged']}" if "merged" in s else ""))


@app.command("pretrain")
def pretrain_cmd(config: Path = typer.Option(..., "--config", "-c", help="YAML, e.g. configs/pretrain_tiny.yaml"),
                 set_: list[str] = typer.Option([], "--set", help="override: --set train.max_steps=100"),
                 overwrite: bool = typer.Option(False)) -> None:
    """Stage 1: causal LM on Seq=<...> blocks with an adapter (+ embeddings, LM head), then merge.

    Example: adaptome protein pretrain -c domains/protein/configs/pretrain_tiny.yaml --set
    train_files=[runs/protein/data/sequences.txt]
    """
    with user_errors():
        _stage("pretrain", config, set_, overwrite)


@app.command("instruct")
def instruct_cmd(config: Path = typer.Option(..., "--config", "-c", help="YAML, e.g. configs/instruct_tiny.yaml"),
                 set_: list[str] = typer.Option([], "--set", help="override: --set model.name_or_path=DIR"),
                 overwrite: bool = typer.Option(False)) -> None:
    """Stage 2: instruction tuning with the prompt masked out of the loss, then merge.

    Example: adaptome protein instruct -c domains/protein/configs/instruct_tiny.yaml --set
    model.name_or_path=runs/protein/stage1_tiny/merged --set train_files=[runs/protein/data/instructions.jsonl]
    """
    with user_errors():
        _stage("instruct", config, set_, overwrite)


@app.command("sample")
def sample_cmd(
    model: Path = typer.Option(..., help="merged checkpoint folder (or hub id)"),
    label: list[str] = typer.Option([], help="condition label (repeatable); none = unconditional Seq=<"),
    task_name: str = typer.Option("superfamily"), task_key: str = typer.Option(""),
    n: int = typer.Option(4, "-n", help="samples per label"),
    prefix: str = typer.Option("", help="sequence prefix after Seq=<"),
    preset: str = typer.Option("auto", help="decoding preset: prollama | small | auto (small under 100 M "
                               "parameters); the options below override single fields"),
    temperature: Optional[float] = typer.Option(None), top_k: Optional[int] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None), repetition_penalty: Optional[float] = typer.Option(None),
    max_new_tokens: Optional[int] = typer.Option(None, help="default: 1.5 x the longest training sequence "
                                                 "saved with the model, else 1024; within the position limit"),
    seed: int = typer.Option(0), batch_size: int = typer.Option(16),
    allow_unseen_labels: bool = typer.Option(False, help="sample a label the model was not trained on"),
    out: Path = typer.Option(..., help="output FASTA"), overwrite: bool = typer.Option(False),
) -> None:
    """Generate sequences, stop at '>', write FASTA with condition + parameters.

    A label the model's training records never held (training_data.json beside the weights) is refused.

    Example: adaptome protein sample --model runs/protein/stage2/merged --task-name family --label Cyclin_N -n 8
    --out gen.fasta
    """
    import dataclasses

    from adaptome.domains.protein.model import load_model_and_tokenizer
    from adaptome.domains.protein.sample import (
        preset_for,
        prompt_plan,
        resolve_max_new_tokens,
        sample,
        with_preset,
        write_samples,
    )
    from adaptome.domains.protein.training_data import check_labels, read_training_data

    _check_new(out, overwrite)
    with user_errors():
        task = _task(task_name, task_key)
        labels = label or [None]
        info = read_training_data(model)
        notes = check_labels(labels, task.key, info, str(model), allow_unseen_labels)
        m, tok = load_model_and_tokenizer(str(model))
        name = preset_for(m) if preset == "auto" else preset
        params = with_preset(name, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size)
        prompts = sorted({p for _, p in prompt_plan(task, labels, 1, prefix)})
        limit, more = resolve_max_new_tokens(m, tok, prompts, max_new_tokens, info)
        params = dataclasses.replace(params, max_new_tokens=limit)
        for note in [f"sampling preset: {name}"] + notes + more:
            typer.echo(note)
        samples = sample(m, tok, task, labels, n, params, prefix, progress=True)
        write_samples(samples, params, out)
    bad = sum(not s.valid for s in samples)
    typer.echo(f"{len(samples)} sequences -> {out} ({bad} incomplete or with non-standard residues, flagged)")


@app.command("classify")
def classify_cmd(
    model: Path = typer.Option(...), fasta: Path = typer.Option(..., help="sequences to label"),
    labels: Path = typer.Option(..., help="candidate labels, one per line (or Key=<label>)"),
    task_name: str = typer.Option("superfamily"), task_key: str = typer.Option(""),
    method: str = typer.Option("determine", help="determine | bayes | generate"),
    policy: str = typer.Option("error"), out: Path = typer.Option(..., help="output CSV"),
    overwrite: bool = typer.Option(False),
) -> None:
    """Predict a label per sequence ([Determine superfamily] or any task) -> CSV id,prediction.

    Example: adaptome protein classify --model runs/protein/stage2/merged --fasta test.fa --labels families.txt
    --task-name family --out pred.csv
    """
    import csv

    from adaptome.core.atomic import atomic_file
    from adaptome.domains.protein.classify import classify
    from adaptome.domains.protein.formats import read_fasta
    from adaptome.domains.protein.model import load_model_and_tokenizer

    _check_new(out, overwrite)
    with user_errors():
        task = _task(task_name, task_key)
        recs = read_fasta(fasta, policy)
        cands = _candidates(labels, task.key)
        m, tok = load_model_and_tokenizer(str(model))
        preds = classify(m, tok, task, [r.seq for r in recs], cands, method, progress=True)

        with atomic_file(out) as f:
            w = csv.writer(f)
            w.writerow(["id", "prediction"])
            w.writerows((r.id, pr["pred"]) for r, pr in zip(recs, preds))
    typer.echo(f"{len(recs)} predictions -> {out}")


@app.command("score-mutations")
def score_mutations_cmd(
    model: Path = typer.Option(...),
    mutants: Optional[Path] = typer.Option(None, help="CSV with a mutant column (e.g. H24C); default: shipped TEM-1"),
    wildtype: Optional[str] = typer.Option(None, help="wild-type FASTA file or sequence; default: shipped TEM-1"),
    offset: int = typer.Option(0, help="position p is residue p - offset of the wild type (TEM-1: 24)"),
    mutant_column: str = typer.Option("mutant"),
    fitness_column: Optional[str] = typer.Option(None, help="measured fitness column -> Spearman"),
    out: Path = typer.Option(..., help="output CSV"), overwrite: bool = typer.Option(False),
) -> None:
    """Fitness = NLL(wild type) - NLL(mutant) per mutant -> CSV; Spearman when fitness is given.

    Example: adaptome protein score-mutations --model runs/protein/stage1/merged --out tem1_scores.csv
    """
    import csv

    from adaptome.core.atomic import atomic_file
    from adaptome.core.evaluation import spearman
    from adaptome.domains.protein import data
    from adaptome.domains.protein.formats import read_fasta
    from adaptome.domains.protein.model import load_model_and_tokenizer
    from adaptome.domains.protein.mutations import read_mutants_csv, score_mutants

    _check_new(out, overwrite)
    with user_errors():
        if mutants is None:
            wt, offset, rows = data.tem1()
            muts, fit = [r[0] for r in rows], [r[1] for r in rows]
        else:
            muts, fit = read_mutants_csv(mutants, mutant_column, fitness_column)
            if wildtype is None:
                fail("give --wildtype with --mutants")
            wt = read_fasta(wildtype)[0].seq if Path(wildtype).is_file() else wildtype.strip().upper()
        m, tok = load_model_and_tokenizer(str(model))
        scores = score_mutants(m, tok, wt, muts, offset, progress=True)

        with atomic_file(out) as f:
            w = csv.writer(f)
            w.writerow(["mutant", "score"] + (["fitness"] if fit else []))
            for i, (mu, sc) in enumerate(zip(muts, scores)):
                w.writerow([mu, f"{sc:.6f}"] + ([fit[i]] if fit else []))
    msg = f"{len(muts)} mutants -> {out}"
    if fit:
        msg += f"; Spearman vs measured fitness {spearman(scores, fit):.3f}"
    typer.echo(msg)


@app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., help="instruction-tuned merged checkpoint"),
    shipped: str = typer.Option("pfam", help="labelled set when no --reference: pfam | ec (split 3 per label, seed 0)"),
    reference: list[Path] = typer.Option([], help="labelled real sequences instead of --shipped (repeatable): "
                                         "Stockholm (label: #=GF ID) or FASTA (label: a Key=<label> header "
                                         "field, as build-dataset writes, or --reference-labels)"),
    reference_labels: Optional[Path] = typer.Option(None, help="CSV/TSV id,label table for --reference FASTA"),
    id_column: str = typer.Option("id"), label_column: str = typer.Option("label"),
    task_name: Optional[str] = typer.Option(None, help="label kind (default: family for pfam and --reference, "
                                            "enzyme class for ec)"),
    task_key: str = typer.Option(""),
    samples: Optional[Path] = typer.Option(None, help="generated FASTA written by `sample`"),
    method: str = typer.Option("determine", help="classification: determine | bayes | generate"),
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
    are refused.

    Example: adaptome protein evaluate --model runs/protein/stage2_tiny/merged --samples gen.fasta --out
    runs/protein/report
    """
    from adaptome.domains.protein import classify, data, evaluate
    from adaptome.domains.protein.model import load_model_and_tokenizer

    _check_new(out, overwrite)
    with user_errors():
        if reference:
            recs = evaluate.read_reference(reference, reference_labels, id_column, label_column)
            task, where = _task(task_name or "family", task_key), ", ".join(map(str, reference))
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
        train, test = data.split_by_label(recs, 3)
        train_c, test_c = data.crop(train, max_residues), data.crop(test, max_residues)
        labels = sorted({r.label for r in train})
        m, tok = load_model_and_tokenizer(str(model))
        report = {"model": str(model), "reference": where, "task": task.name,
                  "perplexity": evaluate.perplexity_on(m, tok, [r.seq for r in test_c]),
                  "n_perplexity_sequences": len(test_c)}
        preds = classify.classify(m, tok, task, [r.seq for r in test_c], labels, method, progress=True)
        report["classification"] = {**evaluate.classification_report(
            [r.label for r in test_c], [p["pred"] for p in preds], train_c, [r.seq for r in test_c]),
            "method": method}
        if gen is not None:
            report["generation"] = evaluate.generation_report(gen, train, recs)
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
