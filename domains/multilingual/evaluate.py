"""``evaluate``: score finished runs, with baselines on the same split, into a CSV and a Markdown table.

Task runs (``train-task`` folders) are reloaded seed by seed from their saved adapters and scored on
the evaluation split (the run's own, or ``eval_file``): macro-F1 for topic and sentiment,
entity-level F1 (``core.evaluation.entity_f1``, conlleval / seqeval default rules) on words for
NER. Language-adapter runs are scored by pseudo-perplexity on a text file, beside the base. An
evaluation split or text file the base's tokenizer does not cover (``mlm.check_coverage``) is refused.

Beside every (language, task, training split, split) the same split gets two baselines, fitted on the
training split of the runs (one pair per distinct training file; runs sharing one share it):
* majority class: the most frequent training label for every example (NER: ``O`` everywhere,
  which finds no entity, F1 0);
* character n-gram logistic regression: TF-IDF of character 1-4-grams within word boundaries
  (scikit-learn ``char_wb``), multinomial logistic regression trained on the training split; for
  NER one word at a time (the word's n-grams and its neighbours', predicting its tag).

``results.csv`` has one row per (run, language, task, split, base, adapter, data source, training split, seed,
metric, value); ``results.md`` gives mean +- sample standard deviation over the seeds of each run on each
split (two runs whose setups share a name, e.g. two task-adapter sizes, stay two rows; baselines fitted on
different training splits stay two rows).

Not covered: significance tests, confidence intervals, per-class reports.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from adaptome.core.evaluation import entity_f1, macro_f1
from adaptome.domains.multilingual import readers

FIELDS = ["run", "language", "task", "split", "base", "adapter", "data_source", "train_split", "seed", "metric",
          "value"]


def majority_baseline(task: str, train, dev) -> float:
    if task == "ner":
        return entity_f1([s.tags for s in dev], [["O"] * len(s.tags) for s in dev])
    top = Counter(e.label for e in train).most_common(1)[0][0]
    return macro_f1([e.label for e in dev], [top] * len(dev))


def _word_features(words: list[str], i: int) -> str:
    prev = words[i - 1] if i > 0 else "<s>"
    nxt = words[i + 1] if i + 1 < len(words) else "</s>"
    return f"{words[i]} | {prev.lower()} {nxt.lower()}"


def ngram_baseline(task: str, train, dev, seed: int = 0) -> float:
    """Character 1-4-gram TF-IDF + logistic regression (module docstring)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if task == "ner":
        x_tr = [_word_features(s.words, i) for s in train for i in range(len(s.words))]
        y_tr = [t for s in train for t in s.tags]
        x_dev = [_word_features(s.words, i) for s in dev for i in range(len(s.words))]
    else:
        x_tr, y_tr = [e.text for e in train], [e.label for e in train]
        x_dev = [e.text for e in dev]
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=1)
    clf = LogisticRegression(max_iter=1000, C=10.0, random_state=seed)
    clf.fit(vec.fit_transform(x_tr), y_tr)
    pred = clf.predict(vec.transform(x_dev)).tolist()
    if task == "ner":
        out, k = [], 0
        for s in dev:
            out.append(pred[k:k + len(s.words)])
            k += len(s.words)
        return entity_f1([s.tags for s in dev], out)
    return macro_f1([e.label for e in dev], pred)


def evaluate_task_runs(run_dirs: list[str | Path], eval_file: str | None = None) -> list[dict]:
    """Result rows of every seed of every run, plus the two baselines per (language, task, training split, split);
    every row names the training split (absolute path) its model or baseline was fitted on."""
    from adaptome.domains.multilingual.mlm import check_coverage
    from adaptome.domains.multilingual.task_train import (
        adapter_label,
        load_task_run,
        make_datasets,
        read_task_data,
        score,
        task_texts,
    )
    from adaptome.domains.multilingual.tasks import PadCollator

    rows, baselines_done = [], set()
    for run_dir in run_dirs:
        meta_path = Path(run_dir) / "run.json"
        if not meta_path.is_file():
            raise readers.DataError(f"{run_dir}: not a train-task run (run.json is missing)")
        seeds = [r["seed"] for r in json.loads(meta_path.read_text(encoding="utf-8"))["runs"]]
        for seed in seeds:
            cfg, labels, tok, model = load_task_run(run_dir, seed)
            split = eval_file or cfg.eval_file
            train, dev, _ = read_task_data(cfg.task, cfg.train_file, split)
            check_coverage(split, task_texts(cfg.task, dev), tok)
            _, dev_set = make_datasets(cfg, tok, train[:1], dev, labels)
            metrics, _ = score(cfg.task, model, dev, dev_set, PadCollator(tok.pad_token_id), labels)
            metric = "entity_f1" if cfg.task == "ner" else "macro_f1"
            label = adapter_label(cfg)
            sources = "+".join(_source(p) for p in cfg.lang_adapters) or "-"
            where, trained_on = str(Path(split).resolve()), str(Path(cfg.train_file).resolve())
            rows.append(_row(str(run_dir), cfg.language, cfg.task, where, cfg.base, label, sources, seed, metric,
                             metrics[metric], trained_on))
            key = (cfg.language, cfg.task, trained_on, where)
            if key not in baselines_done:
                baselines_done.add(key)
                rows.append(_row("-", cfg.language, cfg.task, where, "-", "majority class", "-", "-", metric,
                                 majority_baseline(cfg.task, train, dev), trained_on))
                rows.append(_row("-", cfg.language, cfg.task, where, "-", "char n-gram logreg", "-", "-", metric,
                                 ngram_baseline(cfg.task, train, dev), trained_on))
    return rows


def evaluate_language_adapters(adapter_runs: list[str | Path], text_file: str, max_sentences: int = 200,
                               max_length: int = 128, text_language: str = "?") -> list[dict]:
    """Pseudo-perplexity of each language adapter (and of its base, once) on ``text_file``. The rows' language
    is the text's (``text_language``; "?" when not given), the language an adapter was trained for is in its
    adapter column (``seq_bn [hau]``): an adapter scored on another language's text is a cross-lingual row."""
    from adaptome.core.adapters.io import CheckpointError, load_adapter, read_adapter_meta
    from adaptome.domains.multilingual.base import base_fingerprint, load_base
    from adaptome.domains.multilingual.lang_adapter import adapter_dir
    from adaptome.domains.multilingual.mlm import check_coverage, pseudo_perplexity

    lines = readers.read_text(text_file)[:max_sentences or None]
    where = str(Path(text_file).resolve())
    rows, bases_done = [], set()
    for run in adapter_runs:
        folder = adapter_dir(run)
        meta = read_adapter_meta(folder)
        base = meta.get("base")
        if not base:
            raise readers.DataError(f"{folder}: the adapter does not name its base model")
        if meta.get("base_fingerprint") and base_fingerprint(base) != meta["base_fingerprint"]:
            raise CheckpointError(f"{folder}: its base {base} changed since the adapter was trained; retrain it "
                                  "(or restore the base)")
        tok, model = load_base(base, "mlm")
        check_coverage(text_file, lines, tok)
        trained_for = meta.get("language") or "?"
        if base not in bases_done:
            bases_done.add(base)
            rows.append(_row("-", text_language, "mlm", where, base, "none", "-", "-", "pseudo_perplexity",
                             pseudo_perplexity(model, tok, lines, max_length)))
        model = load_adapter(model, folder)
        rows.append(_row(str(run), text_language, "mlm", where, base, f"{meta['method']} [{trained_for}]",
                         meta.get("source", "?"), "-", "pseudo_perplexity",
                         pseudo_perplexity(model, tok, lines, max_length)))
    return rows


def _source(path: str) -> str:
    from adaptome.domains.multilingual.task_train import lang_adapter_info

    return lang_adapter_info(path)["source"]


def _row(run, language, task, split, base, adapter, source, seed, metric, value, train_split="-") -> dict:
    return {"run": run, "language": language, "task": task, "split": split, "base": base, "adapter": adapter,
            "data_source": source, "train_split": train_split, "seed": seed, "metric": metric, "value": float(value)}


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "value": f"{r['value']:.6g}"})
    return buf.getvalue()


def to_markdown(rows: list[dict]) -> str:
    """Mean +- sample sd over seeds per (run, language, task, split, base, adapter, source, training split,
    metric); folders and files are shown by their last name."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    keys = ("run", "language", "task", "split", "base", "adapter", "data_source", "train_split", "metric")
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r["value"])
    lines = ["| run | language | task | split | base | adapter | data source | train split | metric | mean +- sd | "
             "seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (run, lang, task, split, base, adapter, src, train, metric), vals in groups.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        run_s, split_s, base_s, train_s = (Path(v).name if v != "-" else "-" for v in (run, split, base, train))
        lines.append(f"| {run_s} | {lang} | {task} | {split_s} | {base_s} | {adapter} | {src} | {train_s} | {metric} | "
                     f"{statistics.mean(vals):.4f} +- {sd:.4f} | {len(vals)} |")
    return "\n".join(lines) + "\n"
