"""The pathology decode benchmark's reports are computed from their stored numbers: re-rendering the stored
JSON gives the stored markdown, byte for byte (no sentence edited by hand, none left stale)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "pathology_decode"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"decode_{name}_under_test", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_md_is_the_rendering_of_results_json():
    run = _load("run")
    runs = json.loads((HERE / "results.json").read_text())["runs"]
    assert run.render(runs) == (HERE / "results.md").read_text()
    # the steady-state GPU run's verdict is computed: no case reaches the 0.8
    assert "Extraction / forward-only >= 0.8 (the issue's target) in 0 of 3 cases" in run._markdown(
        "h200-steady", runs["h200-steady"])


def test_gpu_overlap_report_is_the_rendering_of_its_jsons():
    report = _load("gpu_overlap_report")
    text = report.render()
    assert text == (HERE / "results_gpu_overlap.md").read_text()
    assert "0 reach 0.8; the best is 0.63" in text


def test_a_case_whose_device_part_failed_is_reported_not_a_crash():
    # run.py keeps the other cases' numbers when one case's device part raises (``device_error``); the report
    # must then name the failure in that case's row instead of failing on the missing rates
    import copy

    run = _load("run")
    r = copy.deepcopy(json.loads((HERE / "results.json").read_text())["runs"]["h200-steady"])
    case = r["cases"]["synth_20x_224"]
    for k in [k for k in case if k.startswith("resnet18") or k == "split"]:
        del case[k]
    case["device_error"] = "RuntimeError: decoder failed"
    text = run._markdown("t", r)
    assert "| synth_20x_224 | failed: RuntimeError: decoder failed |" in text
    assert "0.58 (synth_40x_to_20x)" in text and "(synth_20x_224)." not in text  # the other case still judged
