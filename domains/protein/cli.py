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
                  "Example: adaptome protein sample --model runs/protein/stage2_tiny/merged "
                  "--label 'Cyclin-like superfamily' -n 8 --out gen.fasta",
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


def _read_labelled(files: list[Path], policy: str, key: str, stockholm_label: str, labels: Optional[Path] = None,
                   id_column: str = "id", label_column: str = "label", what: str = "--fasta"):
    """Records of FASTA / Stockholm files, labelled by a table, a Stockholm family or a ``Key=<label>``
    header field (in that order); None labels stay None."""
    from adaptome.domains.protein import data, formats

    if not files:
        fail(f"give {what} FILE (FASTA or Stockholm)")
    skipped: list[str] = []
    recs = [r for f in files for r in formats.read_sequences(f, policy, key, stockholm_label, skipped)]
    if skipped:
        typer.echo(f"note: {what}: {len(skipped)} record(s) with non-standard residues skipped (--policy skip), "
                   f"e.g. {skipped[0]!r}")
    if not recs:
        fail(f"{what}: no record left to use (--policy {policy})")
    if labels is not None:
        recs = data.attach_labels(recs, data.read_label_table(labels, id_column, label_column), str(labels),
                                  seq_source=", ".join(map(str, files)))
    return recs


@app.command("build-dataset")
def build_dataset(
    fasta: list[Path] = typer.Option([], help="FASTA or Stockholm file(s) of the labelled sequences (repeatable; "
                                    "Stockholm by extension .sto/.stk/.seed/.sth or a '# STOCKHOLM' first line)"),
    labels: Optional[Path] = typer.Option(None, help="CSV/TSV label table with a header row (not needed for "
                                          "Stockholm files, labelled by family, or FASTA headers with Key=<label>)"),
    shipped: Optional[str] = typer.Option(None, help="use shipped data instead: pfam | ec"),
    id_column: str = typer.Option("id"), label_column: str = typer.Option("label"),
    task_name: str = typer.Option("superfamily", help="label kind used in the instructions"),
    task_key: str = typer.Option("", help="field name (default: task name capitalised)"),
    vocab: Optional[str] = typer.Option(None, help="vocabulary file, or 'superfamilies' for ProLLaMA's list"),
    policy: str = typer.Option("error", help="non-standard residues: error | skip | keep"),
    stockholm_label: str = typer.Option("id", help="Stockholm label: the family's #=GF ID or AC line (id | ac)"),
    max_residues: Optional[int] = typer.Option(None, help="keep only the first N residues in the instructions, "
                                               "a cropped generation answer left open without '>' (the stage-1 "
                                               "sequence files stay whole)"),
    max_seq_length: int = typer.Option(256, help="token limit of an instruction record (the instruct config's "
                                       "max_seq_length): the protein is cropped to fit, never the answer"),
    tokenizer: Optional[str] = typer.Option(None, help="tokenizer that counts the tokens (the model folder or hub "
                                            "id the instruct stage uses; default: the character tokenizer)"),
    out: Path = typer.Option(..., help="output folder (instructions.jsonl, sequences.txt, sequences.fasta; "
                             "inputs.json: the digests of the input files)"),
    overwrite: bool = typer.Option(False),
) -> None:
    """Turn labelled FASTA / Stockholm into ProLLaMA instruction JSONL and stage-1 ``Seq=<...>`` lines.

    Every instruction record fits --max-seq-length tokens (and --max-residues residues) with its answer
    whole: a long protein is cropped (a generation answer is left open, without '>'), and the crop is printed.

    Example: adaptome protein build-dataset --fasta seqs.fa --labels labels.csv --task-name superfamily \\
        --vocab superfamilies --out runs/protein/data
    """
    from adaptome.core.atomic import atomic_dir
    from adaptome.domains.protein import data, formats
    from adaptome.domains.protein.dataset_inputs import write_inputs
    from adaptome.domains.protein.tokenizer import load_tokenizer

    _check_new(out, overwrite)
    with user_errors():
        _check_build_options(shipped, fasta, labels, vocab, max_residues)
        task = _task(task_name, task_key)
        if shipped == "pfam":
            whole = data.pfam_families(policy=policy)
        elif shipped == "ec":
            whole = data.ec_records(policy=policy)
        elif shipped is not None:
            fail(f"--shipped {shipped!r}: known: pfam, ec")
        else:
            if not fasta:
                fail("give --fasta (FASTA or Stockholm; --labels for FASTA) or --shipped pfam|ec")
            recs = _read_labelled(fasta, policy, task.key, stockholm_label, labels, id_column, label_column)
            unlabelled = [r for r in recs if r.label is None]
            if unlabelled:
                fail(f"record {unlabelled[0].id!r} (and {len(unlabelled) - 1} more) has no label: give --labels, "
                     f"a Stockholm file, or FASTA headers with {task.key}=<label>")
            voc = None
            if vocab == "superfamilies":
                voc = data.superfamily_vocab()
            elif vocab:
                voc = formats.read_vocab(vocab)
            if voc is not None:
                formats.validate_labels((r.label for r in recs), voc, str(labels or fasta[0]))
            whole = recs
        tok = load_tokenizer(tokenizer)
        records, crops = data.fit_instruction_records(whole, task, tok, max_seq_length, max_residues=max_residues)
        with atomic_dir(out, overwrite) as tmp:
            formats.write_instructions(records, tmp / "instructions.jsonl")
            # stage-1 files hold whole sequences: pretrain cuts windows with markers only at the real ends
            formats.write_seq_lines([r.seq for r in whole], tmp / "sequences.txt")
            formats.write_fasta(((f"{r.id} {task.label_field(r.label)}", r.seq) for r in whole),
                                tmp / "sequences.fasta")
            inputs = [*fasta, *([labels] if labels else []),
                      *([Path(vocab)] if vocab and vocab != "superfamilies" else [])]
            write_inputs(tmp, [] if shipped else inputs, {
                "shipped": shipped, "task_name": task.name, "task_key": task.key, "policy": policy,
                "stockholm_label": stockholm_label, "id_column": id_column, "label_column": label_column,
                "max_residues": max_residues, "max_seq_length": max_seq_length, "tokenizer": tokenizer}, final=out)
    typer.echo(f"{len(whole)} sequences, {len({r.label for r in whole})} labels -> {out}")
    typer.echo(f"instruction records: {crops.message()}")


def _check_build_options(shipped: Optional[str], fasta: list[Path], labels: Optional[Path], vocab: Optional[str],
                         max_residues: Optional[int]) -> None:
    """Refuse build-dataset options that would be ignored or make no sense, before anything is read."""
    if shipped is not None:
        given = [name for name, v in (("--fasta", fasta), ("--labels", labels), ("--vocab", vocab)) if v]
        if given:
            fail(f"--shipped {shipped} and {'/'.join(given)} together: --shipped builds from the shipped data and "
                 f"would ignore {'/'.join(given)}; give one or the other")
    if max_residues is not None and max_residues < 1:
        fail(f"--max-residues {max_residues}: must be at least 1 (leave it out to keep whole proteins)")


def _stage(kind: str, config: Path, set_: list[str], overwrite: bool) -> None:
    from adaptome.core.config import load_config, save_config
    from adaptome.domains.protein.config import InstructConfig, PretrainConfig
    from adaptome.domains.protein.dataset_inputs import stale_inputs
    from adaptome.domains.protein.stages import run_stage_config

    cfg = load_config(PretrainConfig if kind == "pretrain" else InstructConfig, config, set_)
    for line in stale_inputs(cfg.train_files):
        typer.echo(f"warning: {line}")
    s = run_stage_config(cfg, overwrite)
    save_config(cfg, cfg.train.output_dir)
    if s.get("skipped"):  # pretrain with residue_policy=skip
        typer.echo(f"note: pretrain: {len(s['skipped'])} sequence(s) with non-standard residues skipped "
                   f"(residue_policy=skip), e.g. {s['skipped'][0]!r}")
    if kind == "instruct":
        typer.echo(f"instruct: {s['n_truncated']} of {s['n_records']} records cropped to max_seq_length "
                   f"{cfg.max_seq_length} ({s['residues_cropped']} residues; answers kept whole)")
        if s.get("uncond_share"):
            typer.echo(f"instruct: conditioning dropout: each of the {s['n_generation']} generation records was "
                       f"shown without its instruction and label with probability {s['uncond_share']}")
    typer.echo(f"{kind}: {s['steps']} steps, loss {s.get('first_loss', float('nan')):.4f} -> "
               f"{s.get('last_loss', float('nan')):.4f}, trainable {s['trainable']['percent']:.2f}%; "
               f"adapter {s['adapter']}" + (f", merged {s['merged']}" if "merged" in s else ""))


_OVERWRITE_HELP = ("replace adapter/ and merged/ and start the stage again (the output folder's checkpoints/ are "
                   "removed); without it a stopped stage resumes from them")


@app.command("pretrain")
def pretrain_cmd(config: Path = typer.Option(..., "--config", "-c", help="YAML, e.g. configs/pretrain_tiny.yaml"),
                 set_: list[str] = typer.Option([], "--set", help="override: --set train.max_steps=100"),
                 overwrite: bool = typer.Option(False, help=_OVERWRITE_HELP)) -> None:
    """Stage 1: causal LM on Seq=<...> blocks with an adapter (+ embeddings, LM head), then merge.

    Example: adaptome protein pretrain -c domains/protein/configs/pretrain_tiny.yaml \\
        --set train_files=\\[runs/protein/data/sequences.fasta]
    """
    with user_errors():
        _stage("pretrain", config, set_, overwrite)


@app.command("instruct")
def instruct_cmd(config: Path = typer.Option(..., "--config", "-c", help="YAML, e.g. configs/instruct_tiny.yaml"),
                 set_: list[str] = typer.Option([], "--set", help="override: --set model.name_or_path=DIR"),
                 overwrite: bool = typer.Option(False, help=_OVERWRITE_HELP)) -> None:
    """Stage 2: instruction tuning with the prompt masked out of the loss, then merge.

    Example: adaptome protein instruct -c domains/protein/configs/instruct_tiny.yaml \\
        --set model.name_or_path=runs/protein/stage1_tiny/merged \\
        --set train_files=\\[runs/protein/data/instructions.jsonl]
    """
    with user_errors():
        _stage("instruct", config, set_, overwrite)


@app.command("sample")
def sample_cmd(
    model: str = typer.Option(..., help="merged checkpoint folder (or hub id)"),
    label: list[str] = typer.Option([], help="condition label (repeatable); none = unconditional Seq=<"),
    task_name: str = typer.Option("superfamily"), task_key: str = typer.Option(""),
    n: int = typer.Option(4, "-n", help="samples per label"),
    prefix: str = typer.Option("", help="sequence prefix after Seq=<: amino-acid letters (upper-cased)"),
    preset: str = typer.Option("auto", help="decoding preset: prollama | small | auto (small under 100 M "
                               "parameters); the options below override single fields"),
    temperature: Optional[float] = typer.Option(None), top_k: Optional[int] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None), repetition_penalty: Optional[float] = typer.Option(None),
    max_new_tokens: Optional[int] = typer.Option(None, help="default: 1.5 x the longest training sequence "
                                                 "saved with the model, else 1024; within the position limit"),
    seed: int = typer.Option(0), batch_size: int = typer.Option(16),
    residues_only: Optional[bool] = typer.Option(None, "--residues-only/--any-token",
                                                 help="sample only amino-acid letters and the closing '>' inside "
                                                 "the sequence (default: the preset's: on in small, off in prollama)"),
    length_prior: bool = typer.Option(False, "--length-prior/--model-length",
                                      help="NOT plain sampling: draw each sample's length from its label's training "
                                      "lengths (training_data.json) and end it there; default: the model decides "
                                      "where to stop"),
    guidance: Optional[float] = typer.Option(None, help="classifier-free guidance scale (>= 1; 1: off): each step "
                                             "leans away from the model's unconditional Seq=< prediction, towards the "
                                             "label's; about twice the sampling cost (default: the preset's)"),
    allow_unseen_labels: bool = typer.Option(False, help="sample a label the model was not trained on"),
    out: Path = typer.Option(..., help="output FASTA"), overwrite: bool = typer.Option(False),
) -> None:
    """Generate sequences, stop at '>', write FASTA with condition + parameters.

    A label the model's training records never held (training_data.json beside the weights) is refused.

    Example: adaptome protein sample --model runs/protein/stage2_tiny/merged --task-name superfamily \\
        --label 'Cyclin-like superfamily' -n 8 --out gen.fasta
    """
    import dataclasses

    from adaptome.domains.protein.model import load_model_and_tokenizer
    from adaptome.domains.protein.sample import (
        check_header_label,
        clean_prefix,
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
        prefix = clean_prefix(prefix, "--prefix")
        for lab in label:
            check_header_label(lab, "--label")
        twice = next((lab for i, lab in enumerate(label) if lab in label[:i]), None)
        if twice is not None:  # it would get 2 x -n samples
            fail(f"--label {twice!r} given twice: -n {n} sets the samples per label; give each label once")
        if guidance is not None and guidance != 1.0:
            from adaptome.domains.protein.guidance import check_scale

            check_scale(guidance)
            if not label:
                fail("--guidance needs --label: unconditional samples have no label to guide towards")
        if temperature == 0:  # greedy: the preset's top-k / top-p are unused too, but these were asked for
            given = [f"--{flag} {value:g}" for flag, value, off in (("top-k", top_k, 0), ("top-p", top_p, 1.0))
                     if value is not None and value != off]  # the 'off' values (top-k 0, top-p 1) mean plain greedy
            if given:
                fail(f"{' and '.join(given)}: no effect with --temperature 0 (greedy decoding takes the most likely "
                     "residue, nothing is sampled); leave them out, or give a temperature above 0")
        info = read_training_data(model)
        notes = check_labels(labels, task.key, info, str(model), allow_unseen_labels)
        m, tok = load_model_and_tokenizer(str(model))
        name = preset_for(m) if preset == "auto" else preset
        params = with_preset(name, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size,
                             residues_only=residues_only, length_prior=length_prior or None, guidance=guidance)
        prompts = sorted({p for _, p in prompt_plan(task, labels, 1, prefix)})
        limit, more = resolve_max_new_tokens(m, tok, prompts, max_new_tokens, info)
        if params.guidance != 1.0:
            more.append(f"classifier-free guidance {params.guidance}: each step also runs the model on Seq=< "
                        "without the label (about twice the sampling time)")
            if not (info or {}).get("uncond_share"):
                more.append(f"note: {model} was not trained with conditioning dropout (instruct uncond_share 0 or "
                            "not recorded), so its unconditional branch is outside its stage-2 training")
        params = dataclasses.replace(params, max_new_tokens=limit)
        lengths = ((info or {}).get("label_lengths") or {}).get(task.key)
        if length_prior:
            if not lengths:
                fail(f"--length-prior: {model} records no training lengths for {task.key}=<...> labels "
                     "(training_data.json label_lengths, written by instruct); sample without --length-prior")
            more.append("length prior: each sample's length is drawn from its label's training lengths "
                        "(not the model's own stopping)")
        for note in [f"sampling preset: {name}"] + notes + more:
            typer.echo(note)
        samples = sample(m, tok, task, labels, n, params, prefix, progress=True, label_lengths=lengths)
        from adaptome.core.generic_train import recorded_base
        from adaptome.core.train.identity import weights_digest

        # a local folder by its absolute path, so that evaluate run from elsewhere still recognises it; its weights'
        # digest, so that evaluate tells the model retrained in place since
        write_samples(samples, params, out, model=recorded_base(str(model)), model_weights=weights_digest(m)[:16])
    bad = sum(not s.valid for s in samples)
    typer.echo(f"{len(samples)} sequences -> {out} ({bad} incomplete or with non-standard residues, flagged)")



def _trained_max_seq_length(model: Path) -> int:
    """The token limit the model's instruction records were fitted to (its ``training_data.json``), or
    the instruct config's default 256 with a note when the folder does not record one."""
    from adaptome.domains.protein.classify import DEFAULT_MAX_SEQ_LENGTH
    from adaptome.domains.protein.training_data import read_training_data

    info = read_training_data(model) or {}
    limit = info.get("max_seq_length")
    if isinstance(limit, int) and limit > 0:
        return limit
    typer.echo(f"note: {model} does not record its instruct max_seq_length; queries are cropped to "
               f"{DEFAULT_MAX_SEQ_LENGTH} tokens (pass --max-seq-length to change it)")
    return DEFAULT_MAX_SEQ_LENGTH

def _n_trained_on(model: str, recs: list) -> int:
    """How many of the query records the model folder's ``training_data.json`` fingerprints say it was trained on
    (whole, or an N-terminal crop it read); 0 when it records none."""
    from adaptome.domains.protein.training_data import read_training_data, trained_on

    prints = (read_training_data(model) or {}).get("sequence_sha1")
    return sum(trained_on([r.seq for r in recs], prints)) if prints else 0


@app.command("classify")
def classify_cmd(
    model: str = typer.Option(..., help="instruction-tuned causal LM, or an ESM-style masked LM: folder or hub id"),
    fasta: list[Path] = typer.Option(..., help="sequences to label: FASTA or Stockholm (repeatable; ESM: one FASTA); "
                                     "true labels from a Stockholm family or Key=<label> headers give accuracies"),
    train: list[Path] = typer.Option([], help="causal LM: labelled training sequences for the majority-class and "
                                     "k-mer baselines (repeatable): build-dataset's sequences.fasta, or Stockholm"),
    labels: Optional[Path] = typer.Option(None, help="candidate labels, one per line or Key=<label> "
                                          "(default: the labels of --train; ESM: the training labels)"),
    task_name: str = typer.Option("superfamily"), task_key: str = typer.Option(""),
    method: str = typer.Option("", help="causal LM: combined | determine | bayes | generate | probe (a logistic "
                               "regression on mean-pooled hidden states, fitted on --train) (default: the measured "
                               "best, see benchmarks/protein_classify)"),
    max_seq_length: Optional[int] = typer.Option(None, help="causal LM: crop queries as the instruct stage's records "
                                                 "were cropped (default: the limit the model folder's "
                                                 "training_data.json records, else 256; 0: no crop)"),
    stockholm_label: str = typer.Option("id", help="label of Stockholm records: #=GF ID or AC (id | ac)"),
    policy: Optional[str] = typer.Option(None, help="non-standard residues: error | skip | keep (default error; "
                                         "ESM: applies to --fasta and --train-fasta, default the config's "
                                         "residue_policy)"),
    out: Path = typer.Option(..., help="output CSV"),
    overwrite: bool = typer.Option(False),
    train_fasta: Optional[Path] = typer.Option(None, help="ESM: labelled training sequences (FASTA)"),
    train_labels: Optional[Path] = typer.Option(None, help="ESM: CSV/TSV id,label table of --train-fasta"),
    test_labels: Optional[Path] = typer.Option(None, help="ESM: CSV/TSV id,label table of --fasta: accuracy "
                                               "beside the majority class and a 3-mer baseline"),
    id_column: str = typer.Option("id"), label_column: str = typer.Option("label"),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="ESM: YAML (default: the shipped configs/esm_classify.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="ESM: override, e.g. --set adapter.method=dora"),
) -> None:
    """Predict a label per sequence -> CSV.

    A causal LM (ProLLaMA stage 2) ranks the candidate labels ([Determine superfamily] or any task), and
    the majority class and the 3-mer logistic regression (fitted on --train) are printed beside it on the
    same sequences. An ESM-style masked LM (chosen by its config, model_type esm) gets a classification
    head and an adapter trained on --train-fasta / --train-labels (core's training loop,
    configs/esm_classify.yaml); a classifier saved that way (<output_dir>/merged) predicts without them.

    Example: adaptome protein classify --model runs/protein/stage2_tiny/merged --fasta test.fa \\
        --train runs/protein/data/sequences.fasta --task-name superfamily --out pred.csv

    Example: adaptome protein classify --model facebook/esm2_t6_8M_UR50D --train-fasta seqs.fa \\
        --train-labels labels.csv --fasta test.fa --test-labels test_labels.csv --out esm_pred.csv
    """
    import csv

    from adaptome.core.atomic import atomic_file
    from adaptome.domains.protein import classify as cl
    from adaptome.domains.protein.model import is_masked_lm, load_model_and_tokenizer

    _check_new(out, overwrite)
    rep, overlap, meth, unseen, n_labelled, n_trained = None, set(), "", [], 0, 0
    with user_errors():
        if is_masked_lm(model):
            from adaptome.domains.protein.esm_cli import classify_with_esm

            if method or task_key or train:
                fail("--method, --task-key and --train belong to a causal LM's prompt classifier; an ESM classifier "
                     "trains on --train-fasta / --train-labels")
            if len(fasta) != 1:
                fail("an ESM classifier labels one --fasta file at a time")
            recs, preds, lines = classify_with_esm(model, fasta[0], labels, train_fasta, train_labels, test_labels,
                                                   id_column, label_column, policy, config, set_, overwrite)
            with atomic_file(out) as f:
                w = csv.writer(f)
                w.writerow(["id", "prediction"])
                w.writerows((r.id, pr["pred"]) for r, pr in zip(recs, preds))
        else:
            if train_fasta or train_labels or test_labels or config or set_:
                fail("--train-fasta, --train-labels, --test-labels, --config and --set train an ESM classifier; "
                     f"{model} is a causal LM, which classifies with its instruction prompt (use --train)")
            task = _task(task_name, task_key)
            policy = policy or "error"
            meth = method or cl.DEFAULT_METHOD
            if meth not in cl.METHODS:
                fail(f"--method {meth!r}: known: {', '.join(cl.METHODS)}")
            if not train:
                fail("give --train FILE (labelled training sequences, e.g. build-dataset's sequences.fasta): "
                     "classify reports the majority class and the 3-mer baseline beside the model")
            recs = _read_labelled(fasta, policy, task.key, stockholm_label)
            train_recs = _read_labelled(train, policy, task.key, stockholm_label, what="--train")
            bad = [r for r in train_recs if r.label is None]
            if bad:
                fail(f"--train record {bad[0].id!r} has no label (Stockholm family or a {task.key}=<label> header)")
            cands = _candidates(labels, task.key, sorted({r.label for r in train_recs}))
            overlap = {r.seq for r in recs} & {r.seq for r in train_recs}
            n_trained = _n_trained_on(model, recs)
            if max_seq_length is None:
                max_seq_length = _trained_max_seq_length(model)
            m, tok = load_model_and_tokenizer(model)
            seqs = [r.seq for r in recs]
            preds = cl.classify(m, tok, task, seqs, cands, meth, progress=True,
                                max_seq_length=max_seq_length or None, train=train_recs)
            truth = [r.label for r in recs] if all(r.label is not None for r in recs) else None
            n_labelled = sum(r.label is not None for r in recs)
            unseen = [r.label for r in recs if r.label is not None and r.label not in set(cands)]
            rep = cl.with_baselines(train_recs, seqs, preds, truth)
            lines = []
            if preds and "probe" in preds[0]:
                pc = preds[0]["probe"]
                cv = pc["cv_accuracy"][f"{pc['layers']} C={pc['C']:g}"]
                lines.append(f"probe: {pc['layers']} layer(s), C={pc['C']:g}, chosen by cross-validation on --train "
                             f"(accuracy {cv:.3f})")
            with atomic_file(out) as f:
                w = csv.writer(f)
                w.writerow(["id", "prediction", "status", "kmer_prediction"] + (["label"] if truth else []))
                for i, (r, pr) in enumerate(zip(recs, preds)):
                    row = [r.id, pr["pred"] or "", pr["status"], rep["kmer_predictions"][i]]
                    w.writerow(row + ([r.label] if truth else []))
    typer.echo(f"{len(recs)} predictions -> {out}")
    for line in lines:
        typer.echo(line)
    if rep is not None:
        for line in cl.baseline_lines(rep, meth):
            typer.echo(line)
    if overlap:
        typer.echo(f"warning: {len(overlap)} query sequence(s) also occur in --train: not held out")
    if n_trained:
        typer.echo(f"warning: {n_trained} of the {len(recs)} query sequence(s) are among those {model} was trained on "
                   "(the fingerprints of its training_data.json): the accuracy is not held-out")
    if unseen:
        typer.echo(f"warning: {len(unseen)} query record(s) carry a label outside the candidates ("
                   f"{', '.join(sorted(set(unseen))[:3])}): no method can get them right")
    if 0 < n_labelled < len(recs) and rep is not None:
        typer.echo(f"note: only {n_labelled} of {len(recs)} query records carry a label: no accuracy computed")


def _register_judging_commands() -> None:
    """``score-mutations`` and ``evaluate`` live in ``cli_judge`` (this file would pass 500 lines)."""
    from adaptome.domains.protein import cli_judge

    app.command("score-mutations")(cli_judge.score_mutations_cmd)
    app.command("evaluate")(cli_judge.evaluate_cmd)


_register_judging_commands()
