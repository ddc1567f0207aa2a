"""The adapter-quality benchmark's encoder corpus (benchmarks/adapters/quality_task.py ``use_corpus``): the
transductive corpus adds every task sequence (never a label) and pretrains longer, so its encoder has another cache
key; a report cites another results file only when that file used the same encoder."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository root: benchmarks/ is not an installed package
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
qt = importlib.import_module("benchmarks.adapters.quality_task")
report = importlib.import_module("benchmarks.adapters.quality_report")


@pytest.fixture
def restore_corpus():
    kept = qt.CORPUS, qt.PRETRAIN_STEPS
    yield
    qt.CORPUS, qt.PRETRAIN_STEPS = kept


def test_transductive_corpus_adds_task_sequences_not_labels(restore_corpus):
    d = qt.data()
    qt.use_corpus("disjoint")
    disjoint, key_disjoint = qt.pretrain_corpus(d), qt.encoder_settings(qt.pretrain_corpus(d))
    assert qt.PRETRAIN_STEPS == 1500
    task = {r.seq[:qt.WINDOW] for r in d["records"]}
    assert not any(s[:qt.WINDOW] in task for s in disjoint)  # no task sequence in the default corpus
    qt.use_corpus("transductive")
    trans = qt.pretrain_corpus(d)
    assert qt.PRETRAIN_STEPS == qt.TRANSDUCTIVE_STEPS
    assert trans[: len(disjoint)] == disjoint
    added = trans[len(disjoint):]
    assert len(added) == d["n_sequences"] and all(isinstance(s, str) and set(s) <= set(qt.AA + "X-.") for s in added)
    assert {r.seq for r in d["records"]} <= {w for s in added for _, w in qt.tiles(s, qt.WINDOW)}
    key_trans = qt.encoder_settings(trans)
    assert key_trans["corpus_sha256"] != key_disjoint["corpus_sha256"] and key_trans["steps"] != key_disjoint["steps"]
    with pytest.raises(ValueError, match="corpus must be one of"):
        qt.use_corpus("everything")


def test_other_rule_file_is_cited_only_for_the_same_encoder():
    here = ROOT / "benchmarks" / "adapters"
    r8 = json.loads((here / "results_quality_r8.json").read_text(encoding="utf-8"))
    found = report._other_rule(r8)
    assert found is not None and found[0] == "results_quality_r8_nll"
    other_encoder = {**r8, "encoder": {**r8["encoder"], "key": "another-encoder"}}
    assert report._other_rule(other_encoder) is None
    trans = json.loads((here / "results_quality_r8_transductive.json").read_text(encoding="utf-8"))
    text = report.markdown(trans)
    assert "results_quality_r8_nll" not in text and "results_quality_oracle" not in text
    assert "results_quality_dylora_trace" not in text and "transductive" in text
