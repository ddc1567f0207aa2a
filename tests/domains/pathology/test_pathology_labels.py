"""The shipped Digi-sTILs table converts to the label CSV; site-grouped folds keep each site whole."""

from __future__ import annotations

import numpy as np
import pytest

from adaptome.domains.pathology.labels import digi_stils_rows, tcga_site, write_label_csv
from adaptome.domains.pathology.slide import SAMPLE_LABELS
from adaptome.domains.pathology.train import make_folds, read_labels


def test_digi_stils_to_label_csv_and_site_folds(tmp_path):
    rows = digi_stils_rows(SAMPLE_LABELS)
    assert len(rows) == 111
    t = np.array([r["target"] for r in rows])
    assert t.min() == pytest.approx(0.0, abs=1e-6) and t.max() == pytest.approx(56.8, abs=0.05)
    assert t.mean() == pytest.approx(13.1, abs=0.1)
    assert rows[0] == {"slide_id": "TCGA-A1-A0SK", "case_id": "TCGA-A1-A0SK", "target": 5.2198, "site": "A1"}
    back = read_labels(write_label_csv(rows, tmp_path / "labels.csv"))
    assert [r["target"] for r in back] == [r["target"] for r in rows]
    folds = make_folds(back, 5, "site", seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(111))
    fold_of_site = {}
    for f, idx in enumerate(folds):
        for i in idx:
            fold_of_site.setdefault(back[i]["site"], set()).add(f)
    assert all(len(v) == 1 for v in fold_of_site.values())


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="not a TCGA barcode"):
        tcga_site("XYZ-1")
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="t.csv: not a Digi-sTILs table"):
        digi_stils_rows(p)
    p.write_text("slide_id,case_id,target\ns1,c1,140\n")
    with pytest.raises(ValueError, match="t.csv: line 2: target 140.0 outside 0..100"):
        read_labels(p)
