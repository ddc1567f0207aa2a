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

Not covered: per-class reports, micro-F1 for sentence tasks (it equals accuracy for single-label data).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

#: an evaluation split with fewer examples (NER: sentences) than this gets a warning
MIN_EXAMPLES = 20

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
