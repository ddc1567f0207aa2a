"""The numbers the field reports for each task, and when an evaluation split is too small for them to mean much.

Topic classification and sentiment (one label per example) get three numbers:

* ``macro_f1``: the unweighted mean over classes of F1 (the reference code's metric; ``core.evaluation.macro_f1``);
* ``accuracy``: the share of exact matches (what the SIB-200 paper reports; ``core.evaluation.accuracy``);
* ``weighted_f1``: F1 per class weighted by the class's count in the gold labels, sum_c n_c F1_c / sum_c n_c
  (what AfriSenti reports; equal to scikit-learn's ``f1_score(average="weighted")``: a class that is
  predicted but never gold weighs 0, its predictions count as misses of the gold classes).

NER gets entity-level F1 on words (``core.evaluation.entity_f1``, conlleval / seqeval default rules) only.

``split_warning``: an evaluation split of fewer than ``MIN_EXAMPLES`` (20) examples (NER: sentences), or whose
gold labels hold one class only (NER: no entity at all), gives numbers that say little: at 20 examples one
example moves accuracy by 5 points, and on a one-class split a constant predictor (the majority class) scores
perfectly. It is a warning, not an error: such a split is still scored.

``text_warning``: the same for pseudo-perplexity (language adapters): fewer than ``MIN_EXAMPLES`` held-out sentences
scored (the file is that short, or ``--eval-sentences`` / ``--max-sentences`` cut it) give a number that one
sentence moves a lot, and adapters compared on it are not told apart.

``overlap_warning``: an evaluation split (or held-out text) whose examples are, for ``MAX_OVERLAP`` (10 %) or more,
verbatim training examples (the training file given as ``--eval``, or a copy of it) is not held out: its scores
measure memorisation. The shipped SIB-200, AfriSenti and MasakhaNER dev splits repeat 0-1 % of their training
examples. The share is recorded as ``eval_overlap_with_train`` (as ``adaptome train`` does).

Not covered: per-class reports, micro-F1 for sentence tasks (it equals accuracy for single-label data).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

#: an evaluation split with fewer examples (NER: sentences) than this gets a warning
MIN_EXAMPLES = 20

#: an evaluation split this share or more of whose examples are training examples gets a warning
MAX_OVERLAP = 0.1

#: the metrics of a sentence task, the first one being the task's headline metric
SENTENCE_METRICS = ("macro_f1", "accuracy", "weighted_f1")


def headline_metric(task: str) -> str:
    """The metric a task's results are ranked by (``value`` in ``results.csv``)."""
    return "entity_f1" if task == "ner" else "macro_f1"


def weighted_f1(y_true: list, y_pred: list) -> float:
    """F1 per gold class weighted by its support, sum_c n_c F1_c / sum_c n_c (module docstring)."""
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"weighted_f1: {len(y_true)} gold and {len(y_pred)} predicted labels")
    support = Counter(y_true)
    total = 0.0
    for c, n in support.items():
        tp = sum(1 for y, p in zip(y_true, y_pred) if y == c and p == c)
        fp = sum(1 for y, p in zip(y_true, y_pred) if y != c and p == c)
        fn = n - tp
        total += n * (2 * tp / (2 * tp + fp + fn))  # denominator > 0: c is gold at least n >= 1 times
    return total / len(y_true)


def task_metrics(task: str, gold: list, pred: list) -> dict[str, float]:
    """Every metric of ``task`` for gold and predicted labels (NER: tag lists per sentence)."""
    from adaptome.core.evaluation import accuracy, entity_f1, macro_f1

    if task == "ner":
        return {"entity_f1": entity_f1(gold, pred)}
    return {"macro_f1": macro_f1(gold, pred), "accuracy": accuracy(gold, pred), "weighted_f1": weighted_f1(gold, pred)}


def split_warning(path: str | Path, task: str, items: list) -> str | None:
    """A warning line when the evaluation split ``items`` (examples, or NER sentences) of ``path`` is too small or
    one-class to say much (module docstring), else ``None``."""
    problems = []
    unit = "sentences" if task == "ner" else "examples"
    if len(items) < MIN_EXAMPLES:
        problems.append(f"{len(items)} {unit} (fewer than {MIN_EXAMPLES})")
    if task == "ner":
        if not any(t != "O" for s in items for t in s.tags):
            problems.append("no entity (every tag is O; entity F1 is 0 for every system)")
    else:
        classes = {e.label for e in items}
        if len(classes) == 1:
            problems.append(f"one class only ({next(iter(classes))!r}; a constant prediction scores 1.0)")
    if not problems:
        return None
    return f"warning: {path}: the evaluation split holds {' and '.join(problems)}; its scores are not informative"


def text_warning(path: str | Path, scored: int, in_file: int, option: str) -> str | None:
    """A warning line when fewer than ``MIN_EXAMPLES`` sentences of the held-out text ``path`` were scored by
    pseudo-perplexity (``in_file`` of them in the file; ``option`` the flag that caps them), else ``None``."""
    if scored >= MIN_EXAMPLES:
        return None
    why = f"{option} {scored} kept {scored} of its {in_file}" if scored < in_file else "the file holds no more"
    return (f"warning: {path}: pseudo-perplexity on {scored} sentence(s) (fewer than {MIN_EXAMPLES}; {why}); "
            "it is not informative")


def overlap_share(train_texts: list[str], eval_texts: list[str]) -> float:
    """The share of ``eval_texts`` that are also training texts, verbatim (0 for no evaluation text)."""
    seen = set(train_texts)
    return sum(t in seen for t in eval_texts) / len(eval_texts) if eval_texts else 0.0


def overlap_warning(eval_path: str | Path, train_path: str | Path, share: float) -> str | None:
    """The warning line for an evaluation split of which ``share`` (``MAX_OVERLAP`` or more) are training examples."""
    if share < MAX_OVERLAP:
        return None
    return (f"warning: {eval_path}: {share:.0%} of its examples are also in the training split {train_path}; "
            "it is not held out, its scores measure memorisation")
