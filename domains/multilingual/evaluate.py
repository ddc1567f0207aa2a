"""``evaluate``: score finished runs, with baselines on the same split, into a CSV and a Markdown table.

Task runs (``train-task`` folders) are reloaded seed by seed from their saved adapters and scored on
the evaluation split (the run's own, or ``eval_file``): macro-F1, accuracy and weighted F1 for topic and
sentiment (``metrics.task_metrics``; SIB-200 reports accuracy, AfriSenti weighted F1), entity-level F1
(``core.evaluation.entity_f1``, conlleval / seqeval default rules) on words for NER. Language-adapter runs
are scored by pseudo-perplexity on a text file, beside the base. An evaluation split or text file the
base's tokenizer does not cover (``mlm.check_coverage``) is refused; a split of fewer than 20 examples (NER:
sentences) or with one class only (NER: no entity) is scored with a warning (``metrics.split_warning``), and so
is pseudo-perplexity on fewer than 20 sentences (``metrics.text_warning``); a split or text 10 % or more of whose
examples are verbatim training examples (of the run, or of the language adapter's ``run.json``) is warned about
(``metrics.overlap_warning``).

Zero-shot cross-lingual transfer (MAD-X, Pfeiffer et al. 2020): with ``lang_adapter`` the language adapter
of a run trained with ``--stack`` is replaced by another one trained on the same base (e.g. the target
language's) under the run's saved task adapter (``task_train.swap_lang_adapter``). A row's language is the
evaluation split's: ``eval_language`` (``--eval-lang``), the run's ``--lang`` on its own split, ``?`` on
another split when not given.

Beside every (language, task, training split, split) the same split gets two baselines, fitted on the
training split of the runs (one pair per distinct training file; runs sharing one share it; a swapped
language adapter changes nothing about them):
* majority class: the most frequent training label for every example (NER: ``O`` everywhere,
  which finds no entity, F1 0);
* character n-gram logistic regression: TF-IDF of character 1-4-grams within word boundaries
  (scikit-learn ``char_wb``), multinomial logistic regression trained on the training split; for
  NER one word at a time (the word's n-grams and its neighbours', predicting its tag).

``results.csv`` has one row per (run, language, task, split, base, adapter, language adapter folder used,
data source, training split, seed, accuracy, weighted F1, metric, value): ``value`` is the headline metric named
in ``metric`` (macro-F1, entity F1 or pseudo-perplexity), ``accuracy`` and ``weighted_f1`` are empty for NER and
pseudo-perplexity; ``results.md`` gives mean +- sample standard deviation over the seeds of each run on each
split (two runs whose setups share a name, e.g. two task-adapter sizes, stay two rows; baselines fitted on
different training splits stay two rows).

Not covered: significance tests, confidence intervals, per-class reports, swapping the adapters of a fusion.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from adaptome.domains.multilingual import readers
from adaptome.domains.multilingual.metrics import (
    headline_metric,
    overlap_share,
    overlap_warning,
    split_warning,
    task_metrics,
    text_warning,
)

# the headline metric's name and value stay the last two columns (as before accuracy and weighted F1 were added)
FIELDS = ["run", "language", "task", "split", "base", "adapter", "lang_adapter", "data_source", "train_split", "seed",
          "accuracy", "weighted_f1", "metric", "value"]
#: columns beside ``value`` (the headline metric), filled for topic and sentiment rows, empty for the others
EXTRA = ("accuracy", "weighted_f1")


def majority_predictions(task: str, train, dev) -> list:
    """The most frequent training label for every example (NER: ``O`` for every word)."""
    if task == "ner":
        return [["O"] * len(s.tags) for s in dev]
    top = Counter(e.label for e in train).most_common(1)[0][0]
    return [top] * len(dev)


def majority_baseline(task: str, train, dev) -> float:
    """The headline metric (macro-F1, NER entity F1) of ``majority_predictions``."""
    return _headline(task, dev, majority_predictions(task, train, dev))


def _word_features(words: list[str], i: int) -> str:
    prev = words[i - 1] if i > 0 else "<s>"
    nxt = words[i + 1] if i + 1 < len(words) else "</s>"
    return f"{words[i]} | {prev.lower()} {nxt.lower()}"


def ngram_predictions(task: str, train, dev, seed: int = 0) -> list:
    """Character 1-4-gram TF-IDF + logistic regression (module docstring): a label per example, or per NER
    sentence a tag per word."""
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
    if task != "ner":
        return pred
    out, k = [], 0
    for s in dev:
        out.append(pred[k:k + len(s.words)])
        k += len(s.words)
    return out


def ngram_baseline(task: str, train, dev, seed: int = 0) -> float:
    """The headline metric (macro-F1, NER entity F1) of ``ngram_predictions``."""
    return _headline(task, dev, ngram_predictions(task, train, dev, seed))


def _gold(task: str, dev) -> list:
    return [s.tags for s in dev] if task == "ner" else [e.label for e in dev]


def _headline(task: str, dev, pred: list) -> float:
    return task_metrics(task, _gold(task, dev), pred)[headline_metric(task)]


def evaluate_task_runs(run_dirs: list[str | Path], eval_file: str | None = None, lang_adapter: str | None = None,
                       eval_language: str | None = None, warnings: list[str] | None = None) -> list[dict]:
    """Result rows of every seed of every run, plus the two baselines per (language, task, training split, split);
    every row names the training split (absolute path) its model or baseline was fitted on.

    ``eval_file``: score this split instead of each run's own. ``eval_language``: its language, written in the
    rows' language column; without it a row on another split than the run's own says ``?`` (the run's ``--lang``
    would claim the run's language for another language's file). ``lang_adapter``: MAD-X zero-shot transfer, this
    language adapter replaces each (stacked) run's own (``task_train.swap_lang_adapter``); the rows name it in
    their adapter (``seq_bn[text] swapped in: hau -> yor (la_yor)``) and lang_adapter columns, and the baselines
    stay fitted on the run's training split. Warning lines (a tiny or one-class split, ``metrics.split_warning``;
    a split repeating the run's training examples, ``metrics.overlap_warning``; a swapped adapter of another
    configuration or language) are appended to ``warnings``."""
    from adaptome.domains.multilingual.mlm import check_coverage
    from adaptome.domains.multilingual.task_train import (
        adapter_label,
        load_task_run,
        make_datasets,
        read_run_meta,
        read_task_data,
        score,
        task_texts,
    )
    from adaptome.domains.multilingual.tasks import PadCollator

    warnings = warnings if warnings is not None else []
    rows, baselines_done, warned = [], set(), set()
    for run_dir in run_dirs:
        run_meta = read_run_meta(run_dir)
        seeds = [r["seed"] for r in run_meta["runs"]]
        for seed in seeds:
            cfg, labels, tok, model = load_task_run(run_dir, seed, lang_adapter)
            split = eval_file or cfg.eval_file
            train, dev, _ = read_task_data(cfg.task, cfg.train_file, split)
            check_coverage(split, task_texts(cfg.task, dev), tok)
            _, dev_set = make_datasets(cfg, tok, train[:1], dev, labels)
            metrics, _ = score(cfg.task, model, dev, dev_set, PadCollator(tok.pad_token_id), labels)
            metric = headline_metric(cfg.task)
            label = adapter_label(cfg)
            if lang_adapter is not None:
                label = _swapped_label(label, run_meta["config"]["lang_adapters"][0], lang_adapter)
            sources = "+".join(_source(p) for p in cfg.lang_adapters) or "-"
            used = "+".join(cfg.lang_adapters) or "-"
            where, trained_on = str(Path(split).resolve()), str(Path(cfg.train_file).resolve())
            own_split = where == str(Path(cfg.eval_file).resolve())
            language = eval_language or (cfg.language if own_split else "?")
            rows.append(_row(str(run_dir), language, cfg.task, where, cfg.base, label, sources, seed, metric,
                             metrics, trained_on, used))
            if where not in warned:
                warned.add(where)
                line = split_warning(split, cfg.task, dev)
                if line:
                    warnings.append(line)
            if lang_adapter is not None and (str(run_dir), "swap") not in warned:
                warned.add((str(run_dir), "swap"))
                warnings.extend(_swap_warnings(run_dir, run_meta["config"]["lang_adapters"][0], lang_adapter,
                                               eval_language))
            key = (language, cfg.task, trained_on, where)
            if key not in baselines_done:
                baselines_done.add(key)
                line = overlap_warning(split, cfg.train_file,
                                       overlap_share(task_texts(cfg.task, train), task_texts(cfg.task, dev)))
                if line and line not in warnings:
                    warnings.append(line)
                gold = _gold(cfg.task, dev)
                for name, pred in (("majority class", majority_predictions(cfg.task, train, dev)),
                                   ("char n-gram logreg", ngram_predictions(cfg.task, train, dev))):
                    rows.append(_row("-", language, cfg.task, where, "-", name, "-", "-", metric,
                                     task_metrics(cfg.task, gold, pred), trained_on))
    return rows


def _lang_of(path: str | Path) -> str:
    """The language a language adapter was trained for ("?" when it does not say or the folder is gone)."""
    from adaptome.core.adapters.io import CheckpointError
    from adaptome.domains.multilingual.task_train import lang_adapter_info

    try:
        return lang_adapter_info(path)["language"] or "?"
    except (CheckpointError, OSError):
        return "?"


def _swapped_label(label: str, own: str, used: str | Path) -> str:
    return f"{label} swapped in: {_lang_of(own)} -> {_lang_of(used)} ({Path(used).name})"


def _swap_warnings(run_dir, own: str, used: str | Path, eval_language: str | None) -> list[str]:
    """A swapped-in adapter of another method or configuration than the run's own (MAD-X swaps adapters of one
    configuration), or trained for another language than ``eval_language``."""
    from adaptome.core.adapters.io import CheckpointError, read_adapter_meta
    from adaptome.domains.multilingual.lang_adapter import adapter_dir

    out = []
    new = read_adapter_meta(adapter_dir(used))
    try:
        old = read_adapter_meta(adapter_dir(own))
    except (CheckpointError, OSError):
        old = None
    if old is not None and (old["method"], old.get("config")) != (new["method"], new.get("config")):
        out.append(f"warning: {used}: a {new['method']} adapter of another configuration than the one {run_dir} was "
                   f"trained on ({old['method']}); the task adapter never saw its outputs")
    trained_for = new.get("language") or "?"
    if eval_language and trained_for not in ("?", eval_language):
        out.append(f"warning: --eval-lang {eval_language}, but the language adapter {used} was trained for "
                   f"{trained_for!r}")
    return out


def evaluate_language_adapters(adapter_runs: list[str | Path], text_file: str, max_sentences: int = 200,
                               max_length: int = 128, text_language: str = "?",
                               warnings: list[str] | None = None) -> list[dict]:
    """Pseudo-perplexity of each language adapter (and of its base, once) on ``text_file``. The rows' language
    is the text's (``text_language``; "?" when not given), the language an adapter was trained for is in its
    adapter column (``seq_bn [hau]``): an adapter scored on another language's text is a cross-lingual row.
    Fewer than 20 sentences scored is a warning line appended to ``warnings`` (``metrics.text_warning``)."""
    from adaptome.core.adapters.io import CheckpointError, load_adapter, read_adapter_meta
    from adaptome.domains.multilingual.base import base_fingerprint, load_base
    from adaptome.domains.multilingual.lang_adapter import adapter_dir
    from adaptome.domains.multilingual.mlm import check_coverage, pseudo_perplexity

    every = readers.read_text(text_file)
    lines = every[:max_sentences or None]
    line = text_warning(text_file, len(lines), len(every), "--max-sentences")
    if line and warnings is not None:
        warnings.append(line)
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
        trained_on = _adapter_train_file(run)
        line = trained_on and overlap_warning(text_file, trained_on, overlap_share(readers.read_text(trained_on),
                                                                                    lines))
        if line and warnings is not None and line not in warnings:
            warnings.append(line)
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


def _adapter_train_file(run: str | Path) -> str | None:
    """The training text of a ``train-language-adapter`` run, when its ``run.json`` names one that still exists."""
    try:
        path = json.loads((Path(run) / "run.json").read_text(encoding="utf-8"))["config"]["train_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path and Path(path).is_file() else None


def _source(path: str) -> str:
    from adaptome.domains.multilingual.task_train import lang_adapter_info

    return lang_adapter_info(path)["source"]


def _row(run, language, task, split, base, adapter, source, seed, metric, value, train_split="-",
         lang_adapter="-") -> dict:
    """One result row; ``value`` is the headline metric's number, or a dict of ``metrics.task_metrics`` (its
    accuracy and weighted F1 fill the extra columns)."""
    extra = {k: float(value[k]) if k in value else None for k in EXTRA} if isinstance(value, dict) else dict.fromkeys(
        EXTRA)
    value = value[metric] if isinstance(value, dict) else value
    return {"run": run, "language": language, "task": task, "split": split, "base": base, "adapter": adapter,
            "lang_adapter": lang_adapter, "data_source": source, "train_split": train_split, "seed": seed,
            "metric": metric, "value": float(value), **extra}


def to_csv(rows: list[dict]) -> str:
    """``results.csv``: one row per result; ``accuracy`` and ``weighted_f1`` are empty where they do not apply."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, **{k: "" if r[k] is None else f"{r[k]:.6g}" for k in ("value", *EXTRA)}})
    return buf.getvalue()


def to_markdown(rows: list[dict]) -> str:
    """Mean +- sample sd over seeds per (run, language, task, split, base, adapter, language adapter, source,
    training split, metric); folders and files are shown by their last name. The ``mean +- sd`` column is the
    headline metric's (named in ``metric``); accuracy and weighted F1 stand before it ("-" where they do not apply)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    keys = ("run", "language", "task", "split", "base", "adapter", "lang_adapter", "data_source", "train_split",
            "metric")
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    lines = ["| run | language | task | split | base | adapter | data source | train split | metric | "
             "accuracy (mean +- sd) | weighted F1 (mean +- sd) | mean +- sd | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (run, lang, task, split, base, adapter, _, src, train, metric), group in groups.items():
        run_s, split_s, base_s, train_s = (Path(v).name if v != "-" else "-" for v in (run, split, base, train))
        cells = [_mean_sd([r[k] for r in group]) for k in (*EXTRA, "value")]
        lines.append(f"| {run_s} | {lang} | {task} | {split_s} | {base_s} | {adapter} | {src} | {train_s} | {metric} | "
                     f"{' | '.join(cells)} | {len(group)} |")
    return "\n".join(lines) + "\n"


def _mean_sd(vals: list[float | None]) -> str:
    if any(v is None for v in vals):
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.4f} +- {sd:.4f}"
