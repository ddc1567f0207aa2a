"""Task adapters through the CLI: stacking leaves the language adapter bit for bit unchanged, fusion trains
only the fusion and the task adapter, a SIB-200 task adapter beats the majority class, evaluate reloads the
saved runs and writes the CSV and the table beside the baselines; NER and sentiment run end to end."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from adaptome.core.adapters import inject
from adaptome.domains.multilingual.task_train import TaskConfig, build_task_model, load_task_run

from .conftest import DATA, invoke

SIB = DATA / "sib200" / "hau_Latn"
COMMON = ["--max-length", 48, "--batch-size", 16, "--lr", "1e-2"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def topic_runs(tiny_base, lang_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml_topic")
    la_file = lang_adapter / "adapter" / "adapter_model.safetensors"
    before = _sha(la_file)
    for name, extra in (("none", []), ("stack", ["--stack", lang_adapter])):
        res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--lang", "hau",
                      "--train", SIB / "train.tsv", "--eval", SIB / "dev.tsv", "--out", out / name, "--steps", 150,
                      "--seeds", "1", *COMMON, *extra])
        assert res.exit_code == 0, res.output
    assert _sha(la_file) == before
    return out


def test_stacking_trains_only_the_task_adapter(topic_runs, lang_adapter, tiny_base):
    saved = load_file(str(lang_adapter / "adapter" / "adapter_model.safetensors"))
    cfg, labels, _, model = load_task_run(topic_runs / "stack", 1)
    assert cfg.mode == "stack"
    inside = inject.adapter_state_dict(model, "lang0")
    assert inside.keys() == saved.keys() and all(torch.equal(inside[k], saved[k]) for k in saved)
    # trained task adapter differs from a fresh one; what trains in the stacked setup is task + head only
    _, fresh = build_task_model(cfg, labels)
    trainable = [n for n, p in fresh.named_parameters() if p.requires_grad]
    assert trainable and all(".task." in n for n in trainable)
    assert any(".bn_down.task" in n for n in trainable)
    assert any("classifier.modules_to_save.task" in n for n in trainable)
    new, old = inject.adapter_state_dict(model, "task"), inject.adapter_state_dict(fresh, "task")
    assert any(not torch.equal(new[k], old[k]) for k in new)


def test_topic_adapter_beats_majority_and_evaluate_reports_baselines(topic_runs, tmp_path):
    res = invoke(["multilingual", "evaluate", topic_runs / "none", topic_runs / "stack", "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "ev" / "results.csv").open()))
    by = {r["adapter"]: float(r["value"]) for r in rows}
    assert set(by) == {"none", "seq_bn[text]", "majority class", "char n-gram logreg"}
    assert all(r["metric"] == "macro_f1" and r["language"] == "hau" for r in rows)
    assert by["none"] > by["majority class"] and by["seq_bn[text]"] > by["majority class"]
    # reloaded numbers equal the ones computed right after training
    for name, label in (("none", "none"), ("stack", "seq_bn[text]")):
        run = json.loads((topic_runs / name / "run.json").read_text())
        assert by[label] == pytest.approx(run["runs"][0]["macro_f1"], abs=1e-6)
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "majority class" in md and "char n-gram logreg" in md and "+-" in md


def test_fusion_trains_only_fusion_and_task(tiny_base, lang_adapter, text_splits, tmp_path):
    second = tmp_path / "la_yor"
    res = invoke(["multilingual", "train-language-adapter", "--base", tiny_base, "--option", "reduction_factor=4",
                  "--train", text_splits / "yor" / "train.txt", "--eval", text_splits / "yor" / "test.txt",
                  "--source", "yor-text", "--out", second, "--steps", 3, "--max-length", 32, "--eval-sentences", 3])
    assert res.exit_code == 0, res.output
    cfg = TaskConfig(base=str(tiny_base), task="topic", mode="fuse", lang_adapters=[str(lang_adapter), str(second)])
    _, model = build_task_model(cfg, ["a", "b"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".adapter_fusion." in n or ".task." in n for n in trainable)
    assert any(".adapter_fusion." in n for n in trainable) and any(".task." in n for n in trainable)
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", SIB / "train.tsv",
                  "--eval", SIB / "dev.tsv", "--out", tmp_path / "fused", "--fuse", lang_adapter, "--fuse", second,
                  "--steps", 10, "--seeds", "4", *COMMON])
    assert res.exit_code == 0, res.output
    _, _, _, fused = load_task_run(tmp_path / "fused", 4)
    for name, folder in (("lang0", lang_adapter), ("lang1", second)):
        saved = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
        inside = inject.adapter_state_dict(fused, name)
        assert all(torch.equal(inside[k], saved[k]) for k in saved)
    run = json.loads((tmp_path / "fused" / "run.json").read_text())
    assert run["adapter"] == "fuse(seq_bn[text],seq_bn[yor-text])"


@pytest.mark.parametrize("label_mode", ["first", "all"])
def test_ner_end_to_end(tiny_base, tmp_path, label_mode):
    ner = DATA / "masakhaner2" / "hau"
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "ner", "--train", ner / "train.txt",
                  "--eval", ner / "dev.txt", "--out", tmp_path / "ner", "--steps", 15, "--seeds", "1",
                  "--label-mode", label_mode, *COMMON])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "ner" / "run.json").read_text())
    assert 0.0 <= run["runs"][0]["entity_f1"] <= 1.0 and "B-LOC" in run["labels"]
    res = invoke(["multilingual", "evaluate", tmp_path / "ner", "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    rows = {r["adapter"]: float(r["value"]) for r in csv.DictReader((tmp_path / "ev" / "results.csv").open())}
    assert rows["majority class"] == 0.0 and rows["none"] == pytest.approx(run["runs"][0]["entity_f1"])
    assert rows["char n-gram logreg"] > 0.0  # word-level n-gram tagger finds some entities


def test_sentiment_and_option_errors(tiny_base, lang_adapter, tmp_path):
    senti = DATA / "afrisenti" / "hau"
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "sentiment", "--train",
                  senti / "train.tsv", "--eval", senti / "dev.tsv", "--out", tmp_path / "s", "--steps", 5,
                  "--seeds", "1,2", *COMMON])
    assert res.exit_code == 0, res.output
    assert [r["seed"] for r in json.loads((tmp_path / "s" / "run.json").read_text())["runs"]] == [1, 2]
    base = ["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", SIB / "train.tsv",
            "--eval", SIB / "dev.tsv", "--out", tmp_path / "t", "--steps", 2]
    res = invoke(base + ["--stack", lang_adapter, "--full"])
    assert res.exit_code == 2 and "exclude each other" in res.output
    res = invoke(base + ["--fuse", lang_adapter])
    assert res.exit_code == 2 and "--fuse takes two" in res.output
    res = invoke(base + ["--stack", tmp_path / "nowhere"])
    assert res.exit_code == 2 and "nowhere: adapter folder not found" in res.output
    assert not (tmp_path / "t").exists()


def test_every_command_has_help_with_an_example():
    for cmd in ("prepare-text", "prepare-kg", "pretrain-tiny-base", "train-language-adapter", "train-task", "evaluate"):
        res = invoke(["multilingual", cmd, "--help"])
        assert res.exit_code == 0 and "Example: adaptome multilingual" in res.output, cmd


def test_readme_and_help_examples_name_data_that_exists_from_the_repository_root():
    """The README's commands (and the --help examples) run from the repository root: every shipped file or glob
    they name (a path with a folder, outside the runs/ they write) is found there."""
    import glob
    import re
    import shlex

    from adaptome.domains.multilingual import cli

    repo = DATA.parents[2]
    readme = (repo / "domains" / "multilingual" / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).replace("\\\n", " ")
    helps = [cli.app.info.help] + [c.callback.__doc__ for c in cli.app.registered_commands]
    examples = [ln for ln in block.splitlines() if ln.strip()]
    examples += [" ".join(h.split("Example:", 1)[1].split()) for h in helps if "Example:" in h]
    named = [w for ln in examples for w in shlex.split(ln, comments=True)
             if "/" in w and not w.startswith("runs/") and w.endswith((".tsv", ".txt"))]
    assert sum("sib200/hau_Latn/train.tsv" in w for w in named) >= 3, named  # both README train-task lines + help
    for w in named:
        assert glob.glob(str(repo / w)), f"{w}: not found from the repository root"


def test_installed_adaptome_command_mounts_the_domain():
    """The real console script finds the plug-in through the ``adaptome.domains`` entry point."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from adaptome.core.plugins import discover

    plugin = next(p for p in discover() if p.name == "multilingual")
    assert callable(plugin.quickstart)
    exe = shutil.which("adaptome") or str(Path(sys.executable).with_name("adaptome"))
    out = subprocess.run([exe, "multilingual", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train-language-adapter" in out.stdout and "prepare-kg" in out.stdout
