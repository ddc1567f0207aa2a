"""The protein path of ``adaptome quickstart``: ProLLaMA's two stages on the shipped Pfam families
with the tiny LLaMA, a few conditional samples and the evaluation report, in about a CPU minute.

Steps (each writes into ``out_dir``): the five Pfam families with at least seven seed sequences,
balanced to at most 12 each, whole, split 3 per family for testing ->
``data/stage1.fasta`` (every shipped Pfam seed and nrPDB-EC chain except the held-out ones, whole, as
ProLLaMA's stage 1 reads far more sequences than are labelled; stage 1 cuts its own windows),
``data/instructions.jsonl`` (the labelled training families, each record fitted to the instruct config's
``max_seq_length`` as ``build-dataset`` does: a long protein is cropped and a generation answer left open,
never a false end) -> stage 1 (``configs/pretrain_tiny.yaml``) ->
stage 2 from the stage-1 merged checkpoint (``configs/instruct_tiny.yaml``) -> held-out family
prediction (``determine``, ``bayes`` and the default ``probe``, see ``classify.py``) -> 12 samples per
family (the sampling preset for the model's size, the length limit from its saved training data;
``sample.py``), compared with the families' whole sequences ->
``report/report.{json,md}``. Not covered: EC classes and mutation scoring (see the CLI).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any


def _config(name: str, cls, overrides: list[str]):
    from adaptome.core.config import load_config

    return load_config(cls, Path(str(resources.files("adaptome.domains.protein") / "configs" / name)), overrides)


def two_stage(out_dir: Path, s1_steps: int | None = None, s2_steps: int | None = None, n_per_label: int = 12,
              seed: int = 0, progress: bool = False, stage1_set: tuple[str, ...] = (),
              stage2_set: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the whole demo; returns the report dict (also written to ``out_dir/report``).

    ``stage1_set`` / ``stage2_set`` are ``--set``-style overrides of the tiny configs
    (e.g. ``("model.hidden_size=128",)``).
    """
    import dataclasses

    from adaptome.domains.protein import classify, data, evaluate, formats, sample, structure
    from adaptome.domains.protein.config import InstructConfig, PretrainConfig
    from adaptome.domains.protein.model import load_model_and_tokenizer
    from adaptome.domains.protein.stages import run_stage_config
    from adaptome.domains.protein.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    task = data.FAMILY
    recs = data.pfam_families(min_count=7, max_per_family=12, seed=seed)  # whole sequences
    train, test = data.split_by_label(recs, n_test=3, seed=seed)
    # stage 1 sees every shipped sequence except the held-out ones: all Pfam seeds and the EC chains
    held = {r.id for r in test}
    # whole sequences: stage 1 cuts them into windows itself, with markers only at the real ends
    unlabelled = [r for r in data.pfam_families(min_count=1, max_per_family=None) if r.id not in held]
    unlabelled += data.ec_records()
    fasta = formats.write_fasta(((r.id, r.seq) for r in unlabelled), out_dir / "data" / "stage1.fasta")
    c2_defaults = _config("instruct_tiny.yaml", InstructConfig, list(stage2_set))
    records, crops = data.fit_instruction_records(train, task, load_tokenizer(None), c2_defaults.max_seq_length)
    jsonl = formats.write_instructions(records, out_dir / "data" / "instructions.jsonl")

    o1 = [f"train.output_dir={out_dir / 'stage1'}", f"train.seed={seed}", f"train.progress={str(progress).lower()}"]
    o1 += ([f"train.max_steps={s1_steps}"] if s1_steps else []) + list(stage1_set)
    c1 = dataclasses.replace(_config("pretrain_tiny.yaml", PretrainConfig, o1), train_files=[str(fasta)], merge=True)
    s1 = run_stage_config(c1)

    o2 = [f"train.output_dir={out_dir / 'stage2'}", f"train.seed={seed}", f"model.name_or_path={s1['merged']}",
          f"train.progress={str(progress).lower()}"]
    o2 += ([f"train.max_steps={s2_steps}"] if s2_steps else []) + list(stage2_set)
    c2 = dataclasses.replace(_config("instruct_tiny.yaml", InstructConfig, o2), train_files=[str(jsonl)], merge=True)
    s2 = run_stage_config(c2)
    tuned = s2["model"]

    test_c, train_c = test, train
    all_full, train_full = recs, train  # samples are compared with whole sequences
    labels = sorted({r.label for r in train})
    report: dict[str, Any] = {"task": task.name, "labels": labels, "model": s2["merged"],
                              "perplexity_model": s1["merged"], "instruction_crops": crops.message(),
                              "stage1": {"first_loss": s1.get("first_loss"), "last_loss": s1.get("last_loss"),
                                         "steps": s1["steps"], "trainable": s1["trainable"]},
                              "stage2": {"first_loss": s2.get("first_loss"), "last_loss": s2.get("last_loss"),
                                         "steps": s2["steps"], "trainable": s2["trainable"]}}
    stage1_model, tok = load_model_and_tokenizer(s1["merged"])
    report["perplexity"] = evaluate.perplexity_on(stage1_model, tok, [r.seq for r in test_c])
    report["perplexity_stage2"] = evaluate.perplexity_on(tuned, tok, [r.seq for r in test_c])
    report["n_perplexity_sequences"] = len(test_c)
    y = [r.label for r in test_c]
    seqs = [r.seq for r in test_c]
    preds = {m: [p["pred"] for p in classify.classify(tuned, tok, task, seqs, labels, m)]
             for m in ("determine", "bayes")}
    cls = evaluate.classification_report(y, preds["determine"], train_c, seqs)
    cls["method"] = "determine"
    cls["bayes_accuracy"] = sum(a == b for a, b in zip(y, preds["bayes"])) / len(y)
    probe = [p["pred"] for p in classify.classify(tuned, tok, task, seqs, labels, "probe", train=train_c)]
    cls["probe_accuracy"] = sum(a == b for a, b in zip(y, probe)) / len(y)
    report["classification"] = cls
    from adaptome.domains.protein.training_data import read_training_data

    prompts = sorted({p for _, p in sample.prompt_plan(task, labels, 1)})
    limit, _ = sample.resolve_max_new_tokens(tuned, tok, prompts, None, read_training_data(s2["merged"]))
    preset = sample.preset_for(tuned)
    params = sample.with_preset(preset, max_new_tokens=limit, seed=seed)
    samples = sample.sample(tuned, tok, task, labels, n_per_label, params)
    sample.write_samples(samples, params, out_dir / "samples.fasta", model=str(Path(s2["merged"]).resolve()))
    report["generation"] = evaluate.generation_report(samples, train_full, all_full)
    report["sampling"] = {"preset": preset, **dataclasses.asdict(params)}
    report["structure"] = structure.structure_report([], [])  # notes only: no ESMFold ships here
    evaluate.write_report(report, out_dir / "report", overwrite=True)
    return report


def run(out_dir: Path) -> dict[str, float]:
    """``adaptome quickstart`` entry: run the demo, print a summary, return the headline numbers."""
    from rich.console import Console
    from rich.table import Table

    rep = two_stage(Path(out_dir), progress=True)
    c, g = rep["classification"], rep["generation"]
    table = Table(title=f"protein: Pfam family ({len(rep['labels'])} classes), tiny LLaMA, two stages")
    table.add_column("measure")
    table.add_column("value")
    rows = [("held-out perplexity", rep["perplexity"]),
            ("family accuracy, model [Determine family]", c["model_accuracy"]),
            ("family accuracy, model p(seq | family)", c["bayes_accuracy"]),
            ("family accuracy, model probe (classify's default)", c["probe_accuracy"]),
            ("family accuracy, majority class", c["majority_accuracy"]),
            ("family accuracy, k-mer logistic regression", c["kmer_lr_accuracy"]),
            ("samples: validity", g["validity"]),
            ("samples: control accuracy (k-mer judge)", g["control_accuracy"]),
            ("samples: control chance", g["control_chance"])]
    for name, v in rows:
        table.add_row(name, f"{v:.3f}")
    Console().print(table)
    Console().print(f"report: {Path(out_dir) / 'report' / 'report.md'}")
    return {name: float(v) for name, v in rows}
