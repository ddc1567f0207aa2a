"""``adaptome multilingual ...``: prepare-text, prepare-kg, pretrain-tiny-base, train-language-adapter,
train-task, evaluate. Thin: parse options, call the library, print a summary. Errors a user can
cause print one line (``core.cli_errors.user_errors``); outputs are written atomically and an
existing folder is replaced only with ``--overwrite``, never when it is or holds one of the command's
inputs (a run being evaluated, the base, a language adapter, a data file). ``evaluate`` refuses a run
given twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from adaptome.core.cli_errors import fail, user_errors

app = typer.Typer(help="Language and task adapters for low-resource languages (MAD-X style stacking, fusion).\n\n"
                  "Example: adaptome multilingual train-task --base runs/base --task topic "
                  "--train domains/multilingual/data/sib200/hau_Latn/train.tsv "
                  "--eval domains/multilingual/data/sib200/hau_Latn/dev.tsv --stack runs/la_hau --out runs/tc",
                  no_args_is_help=True)


def _parse_options(items: list[str], flag: str = "--option") -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{flag} {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _refuse_out_over_inputs(out: Path, inputs: list) -> None:
    """An error when ``--out`` is, or holds, a file or folder this command reads: replacing it (``--overwrite``)
    would delete the input (the trained run being evaluated, the base, the language adapter, the data) and
    leave only the new output."""
    target = Path(out).expanduser().resolve()
    for item in inputs:
        if item is None or not Path(str(item)).expanduser().exists():
            continue  # a hub id, or an option not given
        path = Path(str(item)).expanduser().resolve()
        if path == target or target in path.parents:
            fail(f"--out {out}: {'is' if path == target else 'holds'} {item}, which this command reads; "
                 "--overwrite would delete it: write the output to another folder")


def _run_inputs(run: Path) -> list:
    """What a finished run reads when it is reloaded: a train-task run's base, language adapters and splits; a
    language adapter's base."""
    from adaptome.core.adapters.io import read_adapter_meta
    from adaptome.core.errors import AdaptomeError
    from adaptome.domains.multilingual.lang_adapter import adapter_dir

    try:
        if (run / "run.json").is_file() and not (run / "adapter").is_dir():
            cfg = json.loads((run / "run.json").read_text(encoding="utf-8")).get("config", {})
            return [cfg.get("base"), *cfg.get("lang_adapters", []), cfg.get("train_file"), cfg.get("eval_file")]
        return [read_adapter_meta(adapter_dir(run)).get("base")]
    except (OSError, ValueError, AttributeError, AdaptomeError):
        return []  # an unreadable run is named by the evaluation itself


def _warn_coverage(summary: dict, files: dict) -> None:
    """A warning line for each file of a run with more than a few <unk> tokens (``mlm.coverage_warning``)."""
    from adaptome.domains.multilingual.mlm import coverage_warning

    for split, share in summary.get("unk_share", {}).items():
        line = coverage_warning(files[split], share)
        if line:
            typer.echo(line)


def _warn_overlap(summary: dict, train: Path, eval: Path) -> None:
    """A warning line when the run's evaluation file repeats its training examples (``metrics.overlap_warning``)."""
    from adaptome.domains.multilingual.metrics import overlap_warning

    line = overlap_warning(eval, train, summary.get("eval_overlap_with_train", 0.0))
    if line:
        typer.echo(line)


@app.command("prepare-text")
def prepare_text_cmd(
    files: List[Path] = typer.Argument(..., help="raw text files of one language, one sentence or document per line"),
    out: Path = typer.Option(..., help="output folder: train.txt, validation.txt, test.txt, report.json"),
    max_lines: Optional[int] = typer.Option(None, help="keep at most this many lines (after deduplication)"),
    min_chars: int = typer.Option(1, help="drop lines shorter than this (characters, after normalisation)"),
    seed: int = typer.Option(0, help="shuffle seed"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Normalise (NFC), deduplicate, cap and split raw text 80/10/10, reporting what was dropped.

    Example: adaptome multilingual prepare-text glotcc_hau.txt --out runs/text/hau --max-lines 100000
    """
    from adaptome.core.atomic import atomic_dir
    from adaptome.domains.multilingual.prepare import prepare_text

    _refuse_out_over_inputs(out, files)
    with user_errors():
        with atomic_dir(out, overwrite=overwrite) as tmp:
            report = prepare_text(files, tmp, max_lines, min_chars, seed)
            (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    typer.echo(json.dumps(report))


@app.command("prepare-kg")
def prepare_kg_cmd(
    files: List[Path] = typer.Argument(..., help="ConceptNet assertion dumps (tab-separated CSV, JSON or JSON lines)"),
    lang: str = typer.Option(..., help="ConceptNet language code; both ends of an assertion must be in it"),
    out: Path = typer.Option(..., help="output folder: train.txt, validation.txt, test.txt, report.json"),
    predicate_map: Optional[Path] = typer.Option(None, help="JSON {relation: English phrase} replacing the default"),
    max_lines: Optional[int] = typer.Option(None, help="keep at most this many sentences"),
    seed: int = typer.Option(0, help="shuffle seed"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Turn ConceptNet assertions into sentences "{start} {phrase} {end}." and split them 80/10/10.

    Example: adaptome multilingual prepare-kg conceptnet-assertions-5.7.0.csv --lang sw --out runs/kg/swa
    """
    from adaptome.core.atomic import atomic_dir
    from adaptome.domains.multilingual.prepare import prepare_kg, read_predicate_map

    _refuse_out_over_inputs(out, [*files, predicate_map])
    with user_errors():
        preds = read_predicate_map(predicate_map) if predicate_map else None
        with atomic_dir(out, overwrite=overwrite) as tmp:
            report = prepare_kg(files, lang, tmp, preds, max_lines, seed)
            (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    typer.echo(json.dumps(report))


@app.command("pretrain-tiny-base")
def pretrain_cmd(
    files: List[Path] = typer.Argument(..., help="text files of all languages, one sentence per line"),
    out: Path = typer.Option(..., help="output folder (a transformers model + tokenizer)"),
    arch: str = typer.Option("xlm-roberta", help="xlm-roberta (Unigram tokenizer) or bert (WordPiece)"),
    vocab_size: int = typer.Option(2000, help="tokenizer vocabulary size"),
    hidden_size: int = typer.Option(64, help="model width"),
    layers: int = typer.Option(2, help="transformer layers"),
    max_length: int = typer.Option(128, help="longest tokenized sentence"),
    steps: int = typer.Option(300, help="MLM pretraining steps"),
    batch_size: int = typer.Option(32, help="sentences per step"),
    lr: float = typer.Option(2e-3, help="peak learning rate"),
    seed: int = typer.Option(0, help="seed"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Pretrain a tiny multilingual masked LM from scratch (no hub here); load it like a hub model.

    Example: adaptome multilingual pretrain-tiny-base domains/multilingual/data/text/*.txt --out runs/base --steps 300
    """
    from adaptome.domains.multilingual.base import TinyBaseConfig, pretrain_tiny_base

    _refuse_out_over_inputs(out, files)
    with user_errors():
        cfg = TinyBaseConfig(arch=arch, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=layers,
                             num_heads=max(1, hidden_size // 16), intermediate_size=2 * hidden_size,
                             max_length=max_length, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
        summary = pretrain_tiny_base(files, out, cfg, overwrite=overwrite, progress=True)
    typer.echo(f"{out}: {summary['parameters']:,} parameters, MLM loss {summary['loss_first']:.3f} -> "
               f"{summary['loss_last']:.3f}")


@app.command("train-language-adapter")
def train_lang_cmd(
    base: str = typer.Option(..., help="hub id or folder of the base masked LM (xlm-roberta-base, runs/base)"),
    train: Path = typer.Option(..., help="training text, one sentence per line"),
    eval: Path = typer.Option(..., help="held-out text for pseudo-perplexity"),
    out: Path = typer.Option(..., help="output folder: adapter/, run.json"),
    method: str = typer.Option("seq_bn", help="adapter method: seq_bn, seq_bn_inv, lora_native, lora, ..."),
    option: List[str] = typer.Option([], help="method option key=value (repeatable), e.g. reduction_factor=8"),
    lang: str = typer.Option("", help="language code written into the results"),
    source: str = typer.Option("text", help="data source label written into the results (text, conceptnet)"),
    steps: int = typer.Option(200, help="optimizer steps"),
    batch_size: int = typer.Option(16, help="sentences per step"),
    lr: float = typer.Option(1e-3, help="peak learning rate"),
    max_length: int = typer.Option(128, help="longest tokenized sentence"),
    mlm_probability: float = typer.Option(0.15, help="share of tokens masked"),
    whole_word: bool = typer.Option(False, help="mask whole words"),
    eval_sentences: int = typer.Option(200, help="held-out sentences scored (0: all)"),
    seed: int = typer.Option(0, help="seed"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Train a language adapter by masked-LM; report held-out pseudo-perplexity of base and adapter.

    Example: adaptome multilingual train-language-adapter --base runs/base --method seq_bn_inv
    --train runs/text/hau/train.txt --eval runs/text/hau/test.txt --lang hau --out runs/la_hau
    """
    from adaptome.domains.multilingual.lang_adapter import LanguageAdapterConfig, train_language_adapter

    _refuse_out_over_inputs(out, [base, train, eval])
    with user_errors():
        cfg = LanguageAdapterConfig(base=base, method=method, options=_parse_options(option), language=lang,
                                    source=source, train_file=str(train), eval_file=str(eval),
                                    eval_sentences=eval_sentences, steps=steps, batch_size=batch_size, lr=lr,
                                    max_length=max_length, mlm_probability=mlm_probability, whole_word=whole_word,
                                    seed=seed)
        s = train_language_adapter(cfg, out, overwrite=overwrite, progress=True)
    _warn_coverage(s, {"train": train, "eval": eval})
    _warn_overlap(s, train, eval)
    typer.echo(f"{out}: {method}, {s['trainable_parameters']:,} trainable parameters; held-out pseudo-perplexity "
               f"{s['pppl_base']:.2f} (base) -> {s['pppl_adapter']:.2f} (adapter)")
    if s.get("eval_warning"):
        typer.echo(s["eval_warning"])


@app.command("train-task")
def train_task_cmd(
    base: str = typer.Option(..., help="hub id or folder of the base encoder"),
    task: str = typer.Option(..., help="topic (SIB-200 TSV), sentiment (tweet/label TSV) or ner (CoNLL BIO)"),
    train: Path = typer.Option(..., help="training split"),
    eval: Path = typer.Option(..., help="evaluation (dev) split"),
    out: Path = typer.Option(..., help="output folder: run.json, seed<k>/"),
    lang: str = typer.Option("", help="language code written into the results"),
    stack: Optional[Path] = typer.Option(None, help="language adapter folder to stack the task adapter on"),
    fuse: List[Path] = typer.Option([], help="two language adapter folders to fuse (give --fuse twice)"),
    full: bool = typer.Option(False, help="full fine-tuning of the base instead of a task adapter"),
    task_method: Optional[str] = typer.Option(None, help="task adapter method (default seq_bn)"),
    reduction_factor: Optional[int] = typer.Option(None, help="task adapter reduction factor (seq_bn, seq_bn_inv "
                                                   "only; default 2)"),
    task_option: List[str] = typer.Option([], help="task adapter option key=value (repeatable), e.g. r=16 "
                                          "lora_alpha=32 for --task-method lora; refused by a method without it"),
    label_mode: Optional[str] = typer.Option(None, help="NER only: label the first subword of a word, or all "
                                             "(default first)"),
    pooling: Optional[str] = typer.Option(None, help="topic/sentiment only: mean of the last hidden states, or cls "
                                          "(first token) (default mean)"),
    steps: int = typer.Option(200, help="optimizer steps per seed"),
    batch_size: int = typer.Option(16, help="examples per step"),
    lr: float = typer.Option(1e-2, help="peak learning rate"),
    max_length: int = typer.Option(128, help="longest tokenized input"),
    seeds: str = typer.Option("1,2,3", help="comma-separated seeds, one run each"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Train a task adapter (alone, stacked on a language adapter, or on a fusion of two) over seeds.

    Example: adaptome multilingual train-task --base runs/base --task topic --lang hau
    --train domains/multilingual/data/sib200/hau_Latn/train.tsv --eval domains/multilingual/data/sib200/hau_Latn/dev.tsv
    --stack runs/la_hau --out runs/tc_hau
    """
    from adaptome.domains.multilingual.task_train import TaskConfig, lang_adapter_info, train_task

    chosen = [name for name, on in (("--stack", stack is not None), ("--fuse", bool(fuse)), ("--full", full)) if on]
    if len(chosen) > 1:
        fail(f"{' and '.join(chosen)} exclude each other")
    if fuse and len(fuse) != 2:
        fail(f"--fuse takes two language adapters (give it twice), got {len(fuse)}")
    mode = "stack" if stack else "fuse" if fuse else "full" if full else "task"
    _refuse_out_over_inputs(out, [base, train, eval, stack, *fuse])
    if full and task_method is not None:
        fail("--task-method and --full exclude each other (full fine-tuning trains no adapter)")
    if full and task_option:
        fail("--task-option and --full exclude each other (full fine-tuning trains no adapter)")
    extra = _parse_options(task_option, "--task-option")
    if reduction_factor is not None and "reduction_factor" in extra:
        fail("--reduction-factor and --task-option reduction_factor=... both given; give one")
    task_method = task_method or "seq_bn"
    bottleneck = task_method in ("seq_bn", "seq_bn_inv")
    # an option that would not act on this run is refused, never silently dropped
    if reduction_factor is not None and (full or not bottleneck):
        fail(f"--reduction-factor applies to a seq_bn / seq_bn_inv task adapter, not to "
             f"{'full fine-tuning' if full else task_method}")
    if label_mode is not None and task != "ner":
        fail(f"--label-mode applies to the ner task, not to {task}")
    if pooling is not None and task == "ner":
        fail("--pooling applies to topic and sentiment; ner classifies every token")
    with user_errors():
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            fail(f"--seeds {seeds!r}: expected comma-separated integers")
        opts = {**({"reduction_factor": reduction_factor or 2} if bottleneck and not full else {}), **extra}
        cfg = TaskConfig(base=base, task=task, language=lang, train_file=str(train), eval_file=str(eval),
                         mode=mode, lang_adapters=[str(p) for p in ([stack] if stack else fuse)],
                         task_method=task_method, task_options=opts, label_mode=label_mode or "first",
                         pooling=pooling or "mean",
                         steps=steps, batch_size=batch_size, lr=lr, max_length=max_length, seeds=seed_list)
        for path in cfg.lang_adapters:
            la_lang = lang_adapter_info(path)["language"]
            if lang and la_lang not in ("", "?", lang):
                typer.echo(f"warning: --lang {lang}, but the language adapter {path} was trained for {la_lang!r}")
        s = train_task(cfg, out, overwrite=overwrite, progress=True)
    _warn_coverage(s, {"train": train, "eval": eval})
    _warn_overlap(s, train, eval)
    if s.get("labels_without_training_examples"):
        typer.echo(f"warning: {train.with_name('labels.txt')}: class(es) {s['labels_without_training_examples']} "
                   f"have no example in {train}; the classifier has outputs it never learns (a header line?)")
    metric = "entity_f1" if task == "ner" else "macro_f1"
    vals = ", ".join(f"seed {r['seed']}: {r[metric]:.4f}" for r in s["runs"])
    typer.echo(f"{out}: {task} with adapter {s['adapter']}, {metric} on {eval.name}: {vals}")
    if s.get("eval_warning"):
        typer.echo(s["eval_warning"])
    cut = max((r.get("truncated_words", 0) for r in s["runs"]), default=0)
    if cut:
        typer.echo(f"warning: {cut} word(s) of {eval.name} got no token from the tokenizer and were predicted O")


@app.command("evaluate")
def evaluate_cmd(
    runs: List[Path] = typer.Argument(..., help="train-task folders and/or train-language-adapter folders"),
    out: Path = typer.Option(..., help="output folder: results.csv, results.md"),
    eval: Optional[Path] = typer.Option(None, help="task runs: score this split instead of the run's own"),
    eval_lang: Optional[str] = typer.Option(None, help="language code of --eval (its rows' language; without it "
                                            "rows on another split than the run's own say '?')"),
    lang_adapter: Optional[Path] = typer.Option(None, help="task runs trained with --stack: use this language "
                                                "adapter in place of the run's own (MAD-X zero-shot transfer); it "
                                                "must be trained on the run's base"),
    text: Optional[Path] = typer.Option(None, help="language adapters: held-out text for pseudo-perplexity"),
    text_lang: str = typer.Option("?", help="language code of --text (its rows' language; each adapter's own "
                                  "language is shown in its adapter column)"),
    max_sentences: int = typer.Option(200, help="pseudo-perplexity: sentences scored (0: all)"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Score runs (macro-F1 with accuracy and weighted F1, entity F1, pseudo-perplexity) beside majority and char
    n-gram baselines; warns when the evaluation split (or --text) is too small or one-class to be informative.

    Example: adaptome multilingual evaluate runs/tc_hau runs/tc_hau_none --out runs/results

    Zero-shot transfer (MAD-X), the Hausa task adapter of runs/tc_hau scored on Yoruba above a Yoruba language
    adapter: adaptome multilingual evaluate runs/tc_hau --eval domains/multilingual/data/sib200/yor_Latn/dev.tsv
    --eval-lang yor --lang-adapter runs/la_yor --out runs/results_yor
    """
    from adaptome.core.atomic import atomic_dir
    from adaptome.domains.multilingual.evaluate import (
        evaluate_language_adapters,
        evaluate_task_runs,
        to_csv,
        to_markdown,
    )

    for r in runs:
        if not (r / "run.json").is_file() and not (r / "adaptome.json").is_file():
            fail(f"{r}: neither a train-task run nor a language adapter (no run.json or adaptome.json)")
    task_runs = [r for r in runs if (r / "run.json").is_file() and not (r / "adapter").is_dir()]
    lang_runs = [r for r in runs if r not in task_runs]
    if text_lang != "?" and text is None:
        fail("--text-lang names the language of --text; give --text FILE")
    if lang_runs and text is None:
        fail(f"{lang_runs[0]}: a language adapter run; give --text FILE to score pseudo-perplexity")
    if eval_lang is not None and eval is None:
        fail("--eval-lang names the language of --eval; give --eval FILE")
    if lang_adapter is not None and not task_runs:
        fail("--lang-adapter replaces the language adapter of train-task runs; none was given")
    if eval is not None and not task_runs:  # it would be ignored: only task runs are scored on a split
        fail(f"--eval {eval}: task runs are scored on it, and none was given (language adapters are scored on "
             "--text); leave --eval out")
    if not lang_runs:  # these would be ignored: only language adapters are scored on --text
        if text is not None:
            fail(f"--text {text}: language adapters are scored on it, and none was given (task runs are scored on "
                 "their own split or --eval); leave --text out")
        if max_sentences != 200:
            fail(f"--max-sentences {max_sentences}: the sentences of --text scored per language adapter, and none "
                 "was given; leave --max-sentences out")
    seen: dict[Path, Path] = {}
    for r in runs:  # one run twice would count its seeds twice in results.md (mean +- sd over "2 seeds")
        first = seen.setdefault(r.resolve(), r)
        if first is not r:
            fail(f"{r}: this run is given twice{'' if str(first) == str(r) else f' (also as {first})'}; "
                 "give each run once")
    _refuse_out_over_inputs(out, [*runs, eval, text, lang_adapter, *(p for r in runs for p in _run_inputs(r))])
    notes: list[str] = []
    with user_errors():
        rows = evaluate_task_runs(task_runs, str(eval) if eval else None, str(lang_adapter) if lang_adapter else None,
                                  eval_lang, notes) if task_runs else []
        if lang_runs:
            rows += evaluate_language_adapters(lang_runs, str(text), max_sentences, text_language=text_lang,
                                               warnings=notes)
        table = to_markdown(rows)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            (tmp / "results.csv").write_text(to_csv(rows), encoding="utf-8")
            (tmp / "results.md").write_text(table, encoding="utf-8")
    for line in notes:
        typer.echo(line)
    typer.echo(table)
