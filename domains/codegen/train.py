"""``codegen train``: adapter fine-tuning of a causal LM on R / Racket code, and the translation objective.

Training data (``read_training_data``):

* a folder of source files (``.r``, ``.R``, ``.rkt``; searched recursively): one example per file,
  the loss on every token;
* a ``{prompt, solution}`` JSONL (MultiPL-T style): one example per line, text = prompt + solution,
  the loss on every token;
* a translation JSONL ``{source, target}`` (optional ``source_language``, default Python, and
  ``target_language``, ``r`` or ``rkt``): the translation objective of "No Silver Bullet": text =
  the source program as comments under a ``<source language>:`` header, then a ``<target>:`` header
  and the target program; the loss only on the target program's tokens.

**Evaluation data is never training data** (MultiPL-E's licence forbids it, and it would make
pass@k meaningless): ``check_no_overlap`` refuses a training example that shares a distinctive
line (>= 20 characters after whitespace is collapsed, and not boilerplate found in 3 or more
problems, such as ``test_humaneval <- function() {``) with any evaluation problem's prompt or
tests, or that defines a function with the signature an evaluation problem's prompt gives it
(same name and parameters, whatever its length: ``(define (add lst)``): the shipped MultiPL-E
subset always, plus any problems file passed as ``eval_problems``. Lines and signatures compare
whatever their spacing (``add<-function(lst){`` is ``add <- function(lst) {``; ``=`` for ``<-``).
The error names the training file, the example and the problem.

Training goes through ``adaptome.core.train.loop.fit`` with any registered adapter
(``core.adapters``, default LoRA on all linear layers); outputs: ``train_config.json``,
``metrics.jsonl``, ``checkpoints/``, ``adapter/``, ``merged/`` (a standalone model + tokenizer that
``codegen serve`` / ``generate --model`` load), ``summary.json``. A run stopped before ``adapter/`` was
written resumes from its last checkpoint when the same command is run again; the resume check covers the
model, ``block_size``, the examples' SHA-256 and the training options, so other data is refused (naming what
changed), and ``train_config.json`` is written only once that check has passed. ``--overwrite`` starts again:
the folder's ``checkpoints/`` and ``metrics.jsonl`` are removed once the data have passed their checks.

Examples whose text (and loss offset) repeats an earlier one exactly (the same file copied twice, a
JSONL line given twice) are dropped with a warning and counted (``duplicate_examples``). ``holdout``
(a share, e.g. 0.1) keeps that share of the examples (at least one; drawn with ``seed``) out of
training: the summary reports their loss before and after training (``heldout_loss_*``) beside the
loss on the training examples themselves (``train_loss_*``, which falls even when the model only
memorizes).

An example with no token to learn (an empty file, a translation pair whose target starts after
``block_size`` tokens) is left out with a warning and listed in the summary's ``examples_without_loss``;
when no example is left the run is refused before anything is written.

Not covered: near-duplicate detection beyond shared lines (renamed variables pass the check),
packing several examples into one block (each example is its own padded sequence, truncated
to ``block_size``), multi-process training (``fit`` supports it; this command runs one process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adaptome.core.errors import AdaptomeError
from adaptome.core.text import read_utf8
from adaptome.domains.codegen.languages import get_language
from adaptome.domains.codegen.problems import SHIPPED, Problem, ProblemError, load_problems, read_jsonl

SOURCE_SUFFIXES = (".r", ".R", ".rkt")
MIN_LINE = 20
log = logging.getLogger(__name__)


class OverlapError(AdaptomeError, ValueError):
    """Training data overlaps evaluation problems."""


@dataclass
class Example:
    text: str
    loss_from: int  # characters before this offset carry no loss (the translation source)
    origin: str  # "file" or "file:line"


@dataclass
class CodegenTrainConfig:
    """Settings of ``codegen train``.

    Args:
        model: ``tiny``, a local folder or a hub id.
        data: training files / folders (see the module docstring for the formats).
        eval_problems: extra problems files the data must not overlap (the shipped subset always counts).
        method: registered adapter method.
        adapter_options: options of the method's config.
        block_size: tokens per example (longer examples are truncated).
        output_dir: where everything goes.
        max_steps: optimizer steps.
        batch_size: examples per step.
        lr: learning rate.
        warmup_steps: linear warm-up steps.
        seed: seed of the tiny model's weights, of training and of the held-out draw.
        holdout: share of the examples kept out of training to report a held-out loss (0: none).
    """

    model: str = "tiny"
    data: list[str] = field(default_factory=list)
    eval_problems: list[str] = field(default_factory=list)
    method: str = "lora"
    adapter_options: dict = field(default_factory=lambda: {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"})
    block_size: int = 512
    output_dir: str = "runs/codegen/train"
    max_steps: int = 100
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 10
    seed: int = 0
    holdout: float = 0.0


def _norm(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()


def _key(line: str) -> str:
    """A line's comparison key: whitespace collapsed, and dropped beside punctuation, so that a line
    reformatted inside (``function(s){`` for ``function (s) {``) is the same line."""
    return re.sub(r" ?([^\w ]) ?", r"\1", _norm(line))


_SIGNATURES = (re.compile(r"(?m)^\s*`?([A-Za-z.][A-Za-z0-9._]*)`?\s*(?:<-|=)\s*function\s*\(([^()]*)\)"),  # R
               re.compile(r"\(\s*define\s+\(\s*([^\s()\[\]]+)((?:\s+[^\s()\[\]]+)*)\s*\)"))  # Racket


def signatures(text: str) -> set[str]:
    """The functions ``text`` defines, as ``name(param,param)`` (R's defaults and spacing normalized away)."""
    out = set()
    for pattern, sep in zip(_SIGNATURES, (",", None)):
        for name, params in pattern.findall(text):
            names = [p.split("=")[0].strip() for p in params.split(sep)]  # R: x, y = 2; Racket: x y
            out.add(f"{name}({','.join(n for n in names if n)})")
    return out


def _comment(text: str, prefix: str) -> str:
    return "\n".join(f"{prefix} {ln}".rstrip() for ln in text.splitlines())


def translation_text(source: str, target: str, target_language: str,
                     source_language: str = "Python") -> tuple[str, int]:
    """The translation example and the offset where the loss starts (the target program)."""
    lang = get_language(target_language)
    head = f"{lang.comment} {source_language}:\n{_comment(source, lang.comment)}\n{lang.comment} {lang.display}:\n"
    return head + target, len(head)


def read_training_data(paths: list[str]) -> list[Example]:
    """Examples from folders of source files and JSONL files ({prompt, solution} or {source, target})."""
    out: list[Example] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in SOURCE_SUFFIXES and f.is_file())
            if not files:
                raise ProblemError(f"{p}: holds no .r / .R / .rkt files")
            out.extend(Example(read_utf8(f, ProblemError), 0, str(f)) for f in files)
        elif p.suffix in SOURCE_SUFFIXES and p.is_file():
            out.append(Example(read_utf8(p, ProblemError), 0, str(p)))
        else:
            for i, row in read_jsonl(p):
                where = f"{p}:{i}"
                if isinstance(row.get("prompt"), str) and isinstance(row.get("solution"), str):
                    out.append(Example(row["prompt"] + row["solution"], 0, where))
                elif isinstance(row.get("source"), str) and isinstance(row.get("target"), str):
                    if "target_language" not in row:
                        raise ProblemError(f"{where}: a translation pair needs 'target_language' (r or rkt)")
                    try:
                        text, start = translation_text(row["source"], row["target"], row["target_language"],
                                                       row.get("source_language", "Python"))
                    except AdaptomeError as e:
                        raise ProblemError(f"{where}: {e}") from None
                    out.append(Example(text, start, where))
                else:
                    raise ProblemError(f"{where}: expected {{prompt, solution}} or {{source, target, target_language}}")
    if not out:
        raise ProblemError("no training examples")
    return out


def evaluation_lines(problems: list[Problem]) -> dict[str, str]:
    """Keys (``_key``) of the distinctive lines of the problems' prompts and tests -> a problem holding them."""
    owners: dict[str, set[str]] = defaultdict(set)
    for p in problems:
        for line in (p.prompt + "\n" + p.tests).splitlines():
            if len(_norm(line)) >= MIN_LINE:
                owners[_key(line)].add(p.name)
    return {line: sorted(names)[0] for line, names in owners.items() if len(names) < 3}


def evaluation_signatures(problems: list[Problem]) -> dict[str, str]:
    """Signatures of the functions the problems' prompts define -> a problem defining it (not ones 3+ share)."""
    owners: dict[str, set[str]] = defaultdict(set)
    for p in problems:
        for sig in signatures(p.prompt):
            owners[sig].add(p.name)
    return {sig: sorted(names)[0] for sig, names in owners.items() if len(names) < 3}


def check_no_overlap(examples: list[Example], eval_problems: list[Problem]) -> None:
    lines, sigs = evaluation_lines(eval_problems), evaluation_signatures(eval_problems)
    for ex in examples:
        for line in ex.text.splitlines():
            k = _key(line)
            if k in lines:
                raise OverlapError(f"{ex.origin}: training data overlaps evaluation problem {lines[k]} "
                                   f"(shared line {_norm(line)[:80]!r}); MultiPL-E prompts and tests are for "
                                   "evaluation only")
        hit = sorted(signatures(ex.text) & sigs.keys())
        if hit:
            sig = hit[0]
            raise OverlapError(f"{ex.origin}: defines {sig}, the function of evaluation problem {sigs[sig]} with "
                               "its parameters (a solution to it?); MultiPL-E prompts and tests are for evaluation "
                               "only: rename it if it is unrelated code")


def all_eval_problems(extra: list[str]) -> list[Problem]:
    probs = [p for name in SHIPPED for p in load_problems(name)]
    for f in extra:
        probs.extend(load_problems(f))
    return probs


def _encode(examples: list[Example], tok, block_size: int) -> list[dict]:
    import torch

    rows = []
    for ex in examples:
        enc = tok(ex.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = (enc["input_ids"] + [tok.eos_token_id])[:block_size]
        offs = (enc["offset_mapping"] + [(len(ex.text), len(ex.text))])[:block_size]
        labels = [i if start >= ex.loss_from else -100 for i, (start, _) in zip(ids, offs)]
        rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
    return rows


def drop_duplicates(examples: list[Example]) -> tuple[list[Example], list[str]]:
    """The examples without exact repeats (same text and loss offset; the first one is kept) and the origins
    of the repeats dropped (logged)."""
    first: dict[tuple[int, str], str] = {}
    kept, dropped = [], []
    for ex in examples:
        key = (ex.loss_from, ex.text)
        if key in first:
            dropped.append(f"{ex.origin} (repeats {first[key]})")
        else:
            first[key] = ex.origin
            kept.append(ex)
    if dropped:
        log.warning(f"dropped {len(dropped)} training example(s) repeating an earlier one exactly, e.g. {dropped[0]}")
    return kept, dropped


def split_holdout(n: int, share: float, seed: int) -> list[int]:
    """Indices of the ``share`` of ``n`` examples held out (at least one, never all), drawn with ``seed``."""
    import random

    if not 0.0 <= share < 1.0:
        raise ProblemError(f"--holdout {share}: must be a share in [0, 1)")
    if not share:
        return []
    k = max(1, round(share * n))
    if k >= n:
        raise ProblemError(f"--holdout {share}: {n} example(s) leave none to train on after holding out {k}; "
                           "add data or lower --holdout")
    return sorted(random.Random(seed).sample(range(n), k))


def _drop_without_loss(examples: list[Example], rows: list[dict], block_size: int):
    """Leave out the examples with no token to learn (an empty file; a translation pair whose target starts
    after ``block_size`` tokens): the loss predicts token t+1 from t, so such an example trains nothing.
    Returns the examples and rows kept and the origins left out (logged); none kept is an error."""
    keep = [int((r["labels"][1:] != -100).sum()) > 0 for r in rows]
    without = [ex.origin for ex, k in zip(examples, keep) if not k]
    if not any(keep):
        raise ProblemError(f"no training example has a token to learn within --block-size {block_size} (e.g. "
                           f"{without[0]}: an empty file, or a translation source longer than the block); "
                           "raise --block-size or check the data")
    if without:
        log.warning(f"left out {len(without)} training example(s) with no token to learn within --block-size "
                    f"{block_size} (an empty file, or a translation source longer than the block), e.g. {without[0]}")
    return ([ex for ex, k in zip(examples, keep) if k], [r for r, k in zip(rows, keep) if k], without)


def _collate(pad_id: int):
    import torch

    def collate(batch: list[dict]) -> dict:
        t = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), t), pad_id)  # (B, T)
        labels = torch.full((len(batch), t), -100)  # (B, T)
        mask = torch.zeros((len(batch), t), dtype=torch.long)  # (B, T)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = b["input_ids"], b["labels"], 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def mean_loss(model, rows: list[dict], collate, batch_size: int = 8) -> float:
    """Mean per-token loss over ``rows`` (tokens with labels only)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            b = collate(rows[i:i + batch_size])
            out = model(**{k: v.to(model.device) for k, v in b.items()})
            n = int((b["labels"][:, 1:] != -100).sum())
            total += out.loss.item() * n
            count += n
    return total / max(1, count)


def examples_digest(examples: list[Example]) -> str:
    """SHA-256 of the examples' texts and loss offsets (part of the resume check: other data is another run)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.loss_from}:{len(ex.text)}:".encode() + ex.text.encode())
    return h.hexdigest()


def run_train(cfg: CodegenTrainConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Check the data, train the adapter, save adapter + merged model; returns the summary."""
    import torch

    from adaptome.core.adapters.api import apply_adapter, make_config, trainable_report
    from adaptome.core.adapters.io import save_adapter, save_merged
    from adaptome.core.atomic import write_text_atomic
    from adaptome.core.train.hooks import WriteOnStart
    from adaptome.core.train.loop import fit
    from adaptome.domains.codegen.models import load_model

    out = Path(cfg.output_dir)
    if (out / "adapter").exists() and not overwrite:
        raise FileExistsError(f"{out / 'adapter'}: already exists; pass --overwrite or choose another --out")
    if not cfg.data:
        raise ProblemError("no training data given (--data FILE_OR_FOLDER)")
    if not 0.0 <= cfg.holdout < 1.0:
        raise ProblemError(f"--holdout {cfg.holdout}: must be a share in [0, 1)")
    if cfg.block_size < 2:
        raise ProblemError(f"--block-size {cfg.block_size}: must be at least 2 (a token and the next one to predict)")
    examples, duplicates = drop_duplicates(read_training_data(cfg.data))
    check_no_overlap(examples, all_eval_problems(cfg.eval_problems))  # before anything is written
    adapter_cfg = make_config(cfg.method, cfg.adapter_options)
    model, tok = load_model(cfg.model, seed=cfg.seed)
    model.train()
    rows = _encode(examples, tok, cfg.block_size)
    examples, rows, without = _drop_without_loss(examples, rows, cfg.block_size)
    held = set(split_holdout(len(rows), cfg.holdout, cfg.seed))
    held_rows = [r for i, r in enumerate(rows) if i in held]
    examples = [ex for i, ex in enumerate(examples) if i not in held]
    rows = [r for i, r in enumerate(rows) if i not in held]
    collate = _collate(tok.pad_token_id)
    loss_before = mean_loss(model, rows, collate)
    held_before = mean_loss(model, held_rows, collate) if held_rows else None
    model = apply_adapter(model, adapter_cfg)
    report = trainable_report(model)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"codegen_train": {"model": cfg.model, "block_size": cfg.block_size,
                                  "data_sha256": examples_digest(examples), "n_examples": len(examples)}}
    res = fit(model, rows, collate_fn=collate, output_dir=out, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
              lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="cosine", seed=cfg.seed,
              log_every=max(1, cfg.max_steps // 10), resume=True, progress=progress,
              cpu=not torch.cuda.is_available(), identity=identity, start_again=overwrite,
              hooks=[WriteOnStart(lambda: write_text_atomic(out / "train_config.json",
                                                            json.dumps(asdict(cfg), indent=1)))])
    model = res.model.eval()
    loss_after = mean_loss(model, rows, collate)
    held_after = mean_loss(model, held_rows, collate) if held_rows else None
    save_adapter(model, out / "adapter", overwrite=overwrite)
    tok.save_pretrained(out / "adapter")
    if adapter_cfg.supports_merge:
        save_merged(model, out / "merged", tokenizer=tok, overwrite=overwrite)
    summary = {"examples": len(examples), "translation_examples": sum(e.loss_from > 0 for e in examples),
               "examples_without_loss": without, "duplicate_examples": len(duplicates),
               "heldout_examples": len(held_rows),
               "method": cfg.method, "trainable": report["trainable"], "steps": res.step,
               "train_loss_before": round(loss_before, 4), "train_loss_after": round(loss_after, 4),
               "heldout_loss_before": None if held_before is None else round(held_before, 4),
               "heldout_loss_after": None if held_after is None else round(held_after, 4),
               "merged": str(out / "merged") if adapter_cfg.supports_merge else None}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def default_training_files(out_dir: str | os.PathLike) -> list[str]:
    """Write the package's own ICL examples as training files (for the quickstart and tests):
    a folder of R / Racket sources and a translation JSONL. Not MultiPL-E data."""
    from adaptome.domains.codegen.prompts import icl_examples

    out = Path(out_dir)
    src = out / "sources"
    src.mkdir(parents=True, exist_ok=True)
    ex = icl_examples()
    for lang, items in ex["few_shot"].items():
        for item in items:
            suffix = get_language(lang).suffix
            text = item["prompt"] + item["solution"] + "\n" + item["check"] + "\n"
            (src / f"{item['name']}{suffix}").write_text(text)
    pairs = out / "translation.jsonl"
    pairs.write_text("".join(json.dumps({"source": p["python"], "target": p["target"], "target_language": lang}) + "\n"
                             for lang, items in ex["translation"].items() for p in items))
    return [str(src), str(pairs)]
