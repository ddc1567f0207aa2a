"""``train-task``: topic classification, sentiment or NER with a task adapter, over several seeds.

For each seed the task model is built from the base (``tasks.setup_model``: task adapter alone,
stacked on a frozen language adapter, on a fusion of two, or full fine-tuning), trained through
``core.train.loop.fit`` and scored on the evaluation split. The folder holds ``run.json`` (the
resolved config, the label list, the per-seed numbers) and per seed ``seed<k>/`` with the task
adapter (its classifier head inside, as ``modules_to_save``), the fusion weights when fused, or
the whole model for full fine-tuning, plus ``predictions.tsv``. ``evaluate`` reloads them.

The label set is the training split's (``labels.txt`` beside a SIB-200 file when present; NER: B-X and I-X for
every entity type X of the training split); a label of the evaluation split outside it is an error, and so is a
training split with one class. ``run.json`` lists the ``labels.txt`` classes that no training example has
(``labels_without_training_examples``; the CLI warns: a header line such as ``category`` read as a class, or a
class the sample lacks, is an output the classifier never learns). Seeds are distinct. A split the base's
tokenizer does not cover (``mlm.check_coverage``) is refused; ``run.json`` records each split's ``<unk>`` share
and the Unicode form its text was read in (``readers.NORMAL_FORM``: NFC, whatever form the files hold).

Provenance: the paths in ``run.json`` are absolute (a run reloads from any directory), and it records
the fingerprint of the base (``base.base_fingerprint``) and the SHA-256 of every language adapter's
files, and of the training split. A language adapter trained on another base is refused at training;
a base or language adapter changed since the run was trained (retrained in place with ``--overwrite``)
is refused at reload, never silently combined with the old task adapter, and so is a changed training
split (the evaluator fits its baselines on it). A damaged ``run.json`` or a truncated weights file is an error
naming it (``read_run_meta``). ``load_task_run(..., lang_adapter=...)`` puts another language
adapter of the same base under a stacked run's task adapter (MAD-X zero-shot transfer, ``swap_lang_adapter``).

``run.json`` records, per seed, macro-F1, accuracy and weighted F1 (NER: entity F1; ``metrics.task_metrics``),
and ``eval_warning`` when the evaluation split is too small or one-class to be informative (``metrics.split_warning``),
and ``eval_overlap_with_train``, the share of evaluation examples that are verbatim training examples
(``metrics.overlap_share``; the CLI warns from 10 %).

Not covered: early stopping and model selection on a separate split (the last step is scored),
gradient accumulation options (use a smaller batch).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from adaptome.domains.multilingual import readers
from adaptome.domains.multilingual.readers import DataError

TASKS = ("topic", "sentiment", "ner")


@dataclass
class TaskConfig:
    """One task run.

    Args:
        base: hub id or folder of the base encoder (the language adapters' base).
        task: ``topic`` (SIB-200 TSV), ``sentiment`` (``tweet``/``text`` + ``label`` TSV) or ``ner`` (CoNLL BIO).
        language: language code written into the results.
        train_file: training split.
        eval_file: evaluation split (dev).
        mode: ``task``, ``stack``, ``fuse`` or ``full`` (see ``tasks.setup_model``).
        lang_adapters: language adapter folders (one for ``stack``, two for ``fuse``).
        task_method: registered method of the task adapter (the reference: AdapterHub's default seq_bn).
        task_options: its options (``reduction_factor``...).
        label_mode: NER subword labels, ``first`` or ``all``.
        pooling: sentence tasks: ``mean`` of the last hidden states or the first (``cls``) token.
        steps: optimizer steps per seed.
        batch_size: examples per step.
        lr: peak learning rate (linear warmup 10 %, linear decay).
        max_length: longest tokenized input.
        seeds: one run per seed.
    """

    base: str = ""
    task: str = "topic"
    language: str = ""
    train_file: str = ""
    eval_file: str = ""
    mode: str = "task"
    lang_adapters: list[str] = field(default_factory=list)
    task_method: str = "seq_bn"
    task_options: dict = field(default_factory=lambda: {"reduction_factor": 2})
    label_mode: str = "first"
    pooling: str = "mean"
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-2
    max_length: int = 128
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])


def validate(cfg: TaskConfig) -> None:
    """Options that would otherwise fail late, or be ignored, are errors up front."""
    from adaptome.domains.multilingual.tasks import SetupError

    if cfg.task not in TASKS:
        raise DataError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    if cfg.label_mode not in ("first", "all"):
        raise SetupError(f"label mode must be 'first' or 'all', got {cfg.label_mode!r}")
    if cfg.pooling not in ("mean", "cls"):
        raise SetupError(f"pooling must be 'mean' or 'cls', got {cfg.pooling!r}")
    if not cfg.seeds:
        raise DataError("give at least one seed")
    twice = sorted({s for s in cfg.seeds if cfg.seeds.count(s) > 1})
    if twice:  # each seed writes seed<k>/: a repeated one would train into the folder of the first
        raise DataError(f"--seeds {','.join(map(str, cfg.seeds))!r}: seed {twice[0]} is given twice")


def adapter_fingerprint(path: str | Path) -> str:
    """SHA-256 over a saved adapter's weights and metadata files."""
    import hashlib

    from adaptome.core.adapters.io import META, WEIGHTS, read_adapter_meta
    from adaptome.domains.multilingual.lang_adapter import adapter_dir

    folder = adapter_dir(path)
    read_adapter_meta(folder)  # a clear error for a folder that is not an adapter
    total = hashlib.sha256()
    for name in (WEIGHTS, META):
        total.update(hashlib.sha256((folder / name).read_bytes()).digest())
    return "sha256:" + total.hexdigest()


def provenance(cfg: TaskConfig) -> dict:
    """Fingerprints of the base and of each language adapter; a language adapter whose recorded base
    fingerprint differs from this base is refused (it was trained on another model)."""
    from adaptome.core.adapters.io import read_adapter_meta
    from adaptome.domains.multilingual.base import base_fingerprint
    from adaptome.domains.multilingual.lang_adapter import adapter_dir
    from adaptome.domains.multilingual.tasks import SetupError

    base_fp = base_fingerprint(cfg.base)
    for path in cfg.lang_adapters:
        meta = read_adapter_meta(adapter_dir(path))
        trained_on = meta.get("base_fingerprint")
        if trained_on is not None and trained_on != base_fp:
            raise SetupError(f"{path}: this language adapter was trained on the base {meta.get('base', '?')} "
                             f"({trained_on[:19]}...), not on {cfg.base} ({base_fp[:19]}...); train it on this base")
    return {"base": base_fp, "lang_adapters": [adapter_fingerprint(p) for p in cfg.lang_adapters],
            "train_file": _file_sha256(cfg.train_file)}


def _file_sha256(path: str | Path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_provenance(cfg: TaskConfig, recorded: dict | None, run_dir: Path, lang_adapters: bool = True) -> None:
    """Refuse to reload a run whose base or language adapters changed since it was trained (with
    ``lang_adapters=False`` the language adapters are not checked: a swapped-in one replaces them,
    ``swap_lang_adapter``)."""
    from adaptome.core.adapters.io import CheckpointError
    from adaptome.domains.multilingual.base import base_fingerprint

    if not recorded:  # a run written before provenance was recorded
        return
    if base_fingerprint(cfg.base) != recorded["base"]:
        raise CheckpointError(f"{run_dir}: its base {cfg.base} changed since the run was trained; retrain the run "
                              "(or restore the base)")
    for path, fp in zip(cfg.lang_adapters if lang_adapters else [], recorded["lang_adapters"]):
        if adapter_fingerprint(path) != fp:
            raise CheckpointError(f"{run_dir}: its language adapter {path} changed since the run was trained; "
                                  "retrain the run (or restore the adapter)")
    # the baselines are trained on this file beside the run: it must still be the run's training data
    train_fp = recorded.get("train_file")
    if train_fp and Path(cfg.train_file).is_file() and _file_sha256(cfg.train_file) != train_fp:
        raise CheckpointError(f"{run_dir}: its training split {cfg.train_file} changed since the run was trained; "
                              "the baselines would be fitted on other data than the run")


def swap_lang_adapter(cfg: TaskConfig, recorded: dict | None, path: str | Path, run_dir: Path) -> TaskConfig:
    """The run's config with the language adapter ``path`` in place of its own (MAD-X zero-shot transfer: the
    task adapter trained above a source-language adapter runs above a target-language one).

    Refused: a run without a language adapter in its stack (a task adapter alone, full fine-tuning), a fusion of
    two (which of them to replace is not defined), and an adapter trained on another base than the run's (its
    recorded base fingerprint differs from the one the run recorded, or it records none)."""
    from adaptome.core.adapters.io import read_adapter_meta
    from adaptome.domains.multilingual.base import base_fingerprint
    from adaptome.domains.multilingual.lang_adapter import adapter_dir
    from adaptome.domains.multilingual.tasks import SetupError

    if cfg.mode != "stack":
        how = {"task": "a task adapter alone, with no language adapter in its stack",
               "full": "full fine-tuning, with no language adapter in its stack",
               "fuse": "a fusion of two language adapters; only a single stacked one can be swapped"}[cfg.mode]
        raise SetupError(f"{run_dir}: --lang-adapter replaces the language adapter of a run trained with --stack, "
                         f"but this run was trained with {how}")
    meta = read_adapter_meta(adapter_dir(path))
    run_base = (recorded or {}).get("base") or base_fingerprint(cfg.base)
    trained_on = meta.get("base_fingerprint")
    if trained_on != run_base:
        what = (f"was trained on the base {meta.get('base', '?')} ({trained_on[:19]}...)" if trained_on
                else "does not record the fingerprint of its base")
        raise SetupError(f"{path}: this language adapter {what}, not on the base of {run_dir} ({cfg.base}, "
                         f"{run_base[:19]}...); it cannot replace the run's language adapter")
    return replace(cfg, lang_adapters=[str(Path(path).resolve())])


def _absolute(cfg: TaskConfig) -> TaskConfig:
    from adaptome.domains.multilingual.base import resolve_base

    return replace(cfg, base=resolve_base(cfg.base), train_file=str(Path(cfg.train_file).resolve()),
                   eval_file=str(Path(cfg.eval_file).resolve()),
                   lang_adapters=[str(Path(p).resolve()) for p in cfg.lang_adapters])


def read_task_data(task: str, train_file: str, eval_file: str) -> tuple[list, list, list[str]]:
    """``(train, eval, labels)``; labels of the evaluation split must occur in training."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "ner":
        train, dev = readers.read_conll(train_file), readers.read_conll(eval_file)
        tags = {t for s in train for t in s.tags}
        if not any(t != "O" for t in tags):
            raise DataError(f"{train_file}: no entity tag in the training split (every tag is O)")
        # B-X and I-X for every entity type X of the training split: "all" subword labelling always has its
        # continuation tag, and a dev entity of a known type is valid whichever tags training happened to use
        # (two-word PER names in dev, one-word ones in training); an unseen type stays an error
        tags = sorted(tags | {f"{p}-{t[2:]}" for t in tags if t != "O" for p in "BI"})
        readers.check_labels(eval_file, readers.first_lines(dev), tags)
        return train, dev, tags
    read = readers.read_topic_tsv if task == "topic" else readers.read_sentiment_tsv
    train, dev = read(train_file), read(eval_file)
    labels_file = Path(train_file).with_name("labels.txt")
    labels = readers.read_labels(labels_file) if task == "topic" and labels_file.is_file() else sorted(
        {e.label for e in train})
    readers.check_labels(train_file, readers.first_lines(train), labels)
    if len({e.label for e in train}) < 2:
        raise DataError(f"{train_file}: every training example has the label {train[0].label!r}; "
                        "a classifier needs at least two classes")
    readers.check_labels(eval_file, readers.first_lines(dev), labels)
    return train, dev, labels


def task_texts(task: str, items: list) -> list[str]:
    """The text of each example (NER: the sentence's words joined by spaces), for ``mlm.check_coverage``."""
    return [" ".join(s.words) for s in items] if task == "ner" else [e.text for e in items]


def lang_adapter_info(path: str | Path) -> dict:
    from adaptome.core.adapters.io import read_adapter_meta
    from adaptome.domains.multilingual.lang_adapter import adapter_dir

    meta = read_adapter_meta(adapter_dir(path))
    return {"method": meta["method"], "source": meta.get("source", "?"), "language": meta.get("language", "?")}


def adapter_label(cfg: TaskConfig) -> str:
    """How the results name this setup (``seq_bn[text]``, ``fuse(seq_bn[text],seq_bn[conceptnet])``...)."""
    if cfg.mode == "full":
        return "full fine-tuning"
    langs = [f"{i['method']}[{i['source']}]" for i in map(lang_adapter_info, cfg.lang_adapters)]
    return {"task": "none", "stack": langs[0] if langs else "", "fuse": f"fuse({','.join(langs)})"}[cfg.mode]


def build_task_model(cfg: TaskConfig, labels: list[str]):
    from adaptome.domains.multilingual import tasks

    tok, model = tasks.build_task_model(cfg.base, len(labels), cfg.task == "ner", cfg.pooling)
    return tok, tasks.setup_model(model, cfg.mode, cfg.task_method, cfg.task_options, cfg.lang_adapters)


def make_datasets(cfg: TaskConfig, tok, train, dev, labels):
    from adaptome.domains.multilingual.tasks import SentenceDataset, TokenDataset

    label2id = {lab: i for i, lab in enumerate(labels)}
    if cfg.task == "ner":
        return (TokenDataset(train, tok, label2id, cfg.max_length, cfg.label_mode),
                TokenDataset(dev, tok, label2id, cfg.max_length, cfg.label_mode))
    return SentenceDataset(train, tok, label2id, cfg.max_length), SentenceDataset(dev, tok, label2id, cfg.max_length)


def score(task: str, model, dev, dev_set, collate, labels: list[str]) -> tuple[dict, list]:
    """The task's metrics (``metrics.task_metrics``: macro-F1, accuracy and weighted F1, or NER entity F1) on the
    evaluation split and the predicted labels (per sentence or per word)."""
    from adaptome.domains.multilingual.metrics import task_metrics
    from adaptome.domains.multilingual.tasks import predict

    preds = predict(model, dev_set, collate)
    if task == "ner":
        words, cut = dev_set.sentence_tags(preds, dict(enumerate(labels)))
        return {**task_metrics(task, [s.tags for s in dev], words), "truncated_words": cut}, words
    pred_labels = [labels[p] for p in preds]
    return task_metrics(task, [e.label for e in dev], pred_labels), pred_labels


def _save_seed(model, cfg: TaskConfig, tok, seed_dir: Path) -> None:
    from safetensors.torch import save_file

    from adaptome.core.adapters.fusion import fusion_state_dict
    from adaptome.core.adapters.io import save_adapter

    if cfg.mode == "full":
        seed_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(seed_dir / "model.safetensors"))
        return
    save_adapter(model, seed_dir / "task_adapter", adapter_name="task")
    if cfg.mode == "fuse":
        state = {k: v.contiguous() for k, v in fusion_state_dict(model).items()}
        save_file(state, str(seed_dir / "fusion.safetensors"))


def _write_predictions(path: Path, dev, preds, task: str) -> None:
    if task == "ner":
        readers.write_conll(path, [readers.Sentence(s.words, p) for s, p in zip(dev, preds)])
    else:
        lines = ["gold\tpredicted\ttext"] + [f"{e.label}\t{p}\t{e.text}" for e, p in zip(dev, preds)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_task(cfg: TaskConfig, out_dir: str | Path, overwrite: bool = False, progress: bool = False) -> dict:
    import torch

    from adaptome.core.adapters.api import trainable_report
    from adaptome.core.atomic import atomic_dir
    from adaptome.core.train.loop import fit
    from adaptome.domains.multilingual.base import load_tokenizer
    from adaptome.domains.multilingual.metrics import overlap_share, split_warning
    from adaptome.domains.multilingual.mlm import check_coverage
    from adaptome.domains.multilingual.tasks import PadCollator

    validate(cfg)
    cfg = _absolute(cfg)
    train, dev, labels = read_task_data(cfg.task, cfg.train_file, cfg.eval_file)
    # labels.txt classes no training example has: outputs the classifier never learns (a header line read as one)
    unused = [c for c in labels if c not in {e.label for e in train}] if cfg.task != "ner" else []
    label = adapter_label(cfg)
    recorded = provenance(cfg)
    tok = load_tokenizer(cfg.base)
    unk = {"train": check_coverage(cfg.train_file, task_texts(cfg.task, train), tok),
           "eval": check_coverage(cfg.eval_file, task_texts(cfg.task, dev), tok)}
    runs = []
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for seed in cfg.seeds:
            torch.manual_seed(seed)
            tok, model = build_task_model(cfg, labels)
            train_set, dev_set = make_datasets(cfg, tok, train, dev, labels)
            collate = PadCollator(tok.pad_token_id)
            seed_dir = Path(tmp) / f"seed{seed}"
            t0 = time.perf_counter()
            res = fit(model, train_set, collate_fn=collate, output_dir=seed_dir / "train", max_steps=cfg.steps,
                      batch_size=min(cfg.batch_size, len(train_set)), lr=cfg.lr,
                      warmup_steps=max(1, cfg.steps // 10), log_every=max(1, cfg.steps // 10), seed=seed,
                      progress=progress, resume=False)
            train_s = time.perf_counter() - t0
            metrics, preds = score(cfg.task, res.model, dev, dev_set, collate, labels)
            _save_seed(res.model, cfg, tok, seed_dir)
            _write_predictions(seed_dir / "predictions.tsv", dev, preds, cfg.task)
            runs.append({"seed": seed, **metrics, "trainable_parameters": trainable_report(res.model)["trainable"],
                         "train_seconds": train_s, "step_seconds": train_s / res.step})
        summary = {"config": asdict(cfg), "labels": labels, "adapter": label, "provenance": recorded,
                   "labels_without_training_examples": unused,
                   "unk_share": unk, "unicode_normal_form": readers.NORMAL_FORM,
                   "eval_overlap_with_train": round(overlap_share(task_texts(cfg.task, train),
                                                                  task_texts(cfg.task, dev)), 4),
                   "eval_warning": split_warning(cfg.eval_file, cfg.task, dev), "runs": runs}
        (Path(tmp) / "run.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def read_run_meta(run_dir: str | Path) -> dict:
    """A train-task run's ``run.json``; a missing, damaged (cut by a killed copy or a full disk, not UTF-8) or
    incomplete one (no ``config``, ``labels`` or per-seed ``runs``) is an error naming it."""
    from adaptome.core.adapters.io import CheckpointError

    meta_path = Path(run_dir) / "run.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{run_dir}: not a train-task run (run.json is missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: damaged, not JSON ({e}); train the run again") from None
    fields = ("config", dict), ("labels", list), ("runs", list)
    lacking = [k for k, kind in fields if not isinstance(meta, dict) or not isinstance(meta.get(k), kind)]
    if lacking or not all(isinstance(r, dict) and isinstance(r.get("seed"), int) for r in meta["runs"]):
        what = ", ".join(lacking) if lacking else "a seed in runs"
        raise CheckpointError(f"{meta_path}: not a complete train-task run.json (no {what}); train the run again")
    unknown = sorted(set(meta["config"]) - set(TaskConfig.__dataclass_fields__))
    if unknown:
        raise CheckpointError(f"{meta_path}: config has keys train-task does not write ({', '.join(unknown[:5])}); "
                              "train the run again")
    return meta


def load_task_run(run_dir: str | Path, seed: int, lang_adapter: str | Path | None = None):
    """``(config, labels, tokenizer, model)`` of one seed of a finished ``train-task`` run; with ``lang_adapter``,
    that language adapter replaces the run's own under the saved task adapter (``swap_lang_adapter``; the
    config returned names it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from adaptome.core.adapters import inject
    from adaptome.core.adapters.fusion import load_fusion_state_dict
    from adaptome.core.adapters.io import WEIGHTS, CheckpointError
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    cfg = TaskConfig(**meta["config"])
    if lang_adapter is not None:
        cfg = swap_lang_adapter(cfg, meta.get("provenance"), lang_adapter, run_dir)
    check_provenance(cfg, meta.get("provenance"), run_dir, lang_adapters=lang_adapter is None)
    labels = meta["labels"]
    seed_dir = run_dir / f"seed{seed}"
    tok, model = build_task_model(cfg, labels)
    def weights(path: Path) -> dict:  # a truncated file (a killed copy) is named, not a SafetensorError traceback
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                  "train the run again") from None

    if cfg.mode == "full":
        model.load_state_dict(weights(seed_dir / "model.safetensors"))
        return cfg, labels, tok, model.eval()
    adapter_dir = seed_dir / "task_adapter"
    if not (adapter_dir / WEIGHTS).is_file():
        raise CheckpointError(f"{adapter_dir}: task adapter missing")
    inject.set_adapter_state_dict(model, weights(adapter_dir / WEIGHTS), "task", source=str(adapter_dir))
    if cfg.mode == "fuse":
        load_fusion_state_dict(model, weights(seed_dir / "fusion.safetensors"), str(seed_dir))
    return cfg, labels, tok, model.eval()
