"""Which classifier should ``adaptome protein classify`` use by default? Held-out Pfam sequences.

For each seed: the shipped Pfam seed families with at least 7 members (5 families, at most 12
sequences each, full length: 58-481 residues), 3 per family held out (``data.split_by_label``);
stage 1 (``configs/pretrain_tiny.yaml``) on every shipped Pfam seed and nrPDB-EC chain except the
held-out ones; stage 2 (``configs/instruct_tiny.yaml``; ``--s2-steps`` overrides its 600 steps) on the
training families' instruction records as ``build-dataset`` writes them (``data.fit_instruction_records``),
whole by default (``max_seq_length`` = the longest protein + 64, as benchmarks/protein_generate does,
so the model reads every residue the 3-mer baseline reads; ``--max-seq-length 256`` crops the protein,
never an answer). The raw per-candidate ``determine`` / ``bayes`` scores of the held-out and the
training sequences are saved, and the report computes from them the length-normalised variant of
``combined``, the training-side accuracies (how far training got), the per-family confusion and the
stage-2 loss curve. With ``--samples N`` the same models also sample N sequences per family with
every setting of benchmarks/protein_generate and measure where they learned that a family ends
(``end_marker_stats`` there; both read there with ``--from-classify``).
Then on the held-out sequences (cropped exactly as training
cropped them): ``determine``, ``bayes``, ``combined``, ``generate`` and ``probe`` (``classify.py``; the
probe's layers and C are chosen by cross-validation on the training side only, ``probe.py``), beside the
majority class and the 3-mer logistic regression fitted on the same training side
(``classify.with_baselines``). The best of ``CANDIDATES`` by mean held-out accuracy over the seeds is the
one ``classify.DEFAULT_METHOD`` should name; the report says whether it does.

Writes ``results.json`` and ``results.md`` beside this file.
Reproduce: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/protein_classify/run.py --jobs 2``
(``--jobs 1`` runs the seeds one after another with the same numbers; ``--render-only`` rewrites
``results.md`` from ``results.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
CMD = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/protein_classify/run.py --jobs 2"
#: the methods a default is chosen from (``generate`` decodes freely and is reported, never chosen)
CANDIDATES = ("determine", "bayes", "combined", "probe")


def answers_cut_without_fitting(seed: int, max_seq_length: int = 256) -> dict:
    """What ProLLaMA's cut of the token row would have done to this seed's training records: the
    records whose answer (and its ``</s>``) would not have fitted, split by kind."""
    from adaptome.domains.protein import data
    from adaptome.domains.protein.formats import prompt_of
    from adaptome.domains.protein.instruct import n_tokens
    from adaptome.domains.protein.tokenizer import build_tokenizer

    tok = build_tokenizer()
    recs = data.pfam_families(min_count=7, max_per_family=12, max_residues=None, seed=seed)
    train, _ = data.split_by_label(recs, n_test=3, seed=seed)
    out = {"n_records": 0, "determine_answer_cut": 0, "generate_answer_cut": 0}
    for r in data.instruction_records(train, data.FAMILY):
        out["n_records"] += 1
        if n_tokens(tok, prompt_of(r), r["output"]) > max_seq_length:
            out["determine_answer_cut" if r["instruction"].startswith("[Determine") else "generate_answer_cut"] += 1
    return out


def one_seed(seed: int, work: Path, s1_steps: int | None, s2_steps: int | None,
             max_seq_length: int | None = None, n_samples: int = 0, s1_set: tuple[str, ...] = (),
             s2_set: tuple[str, ...] = (), validation: bool = False, settings: tuple[str, ...] | None = None) -> dict:
    from importlib import resources

    from adaptome.core.config import load_config
    from adaptome.domains.protein import classify, data, formats
    from adaptome.domains.protein.config import InstructConfig, PretrainConfig
    from adaptome.domains.protein.stages import run_stage_config
    from adaptome.domains.protein.tokenizer import build_tokenizer

    cfgs = Path(str(resources.files("adaptome.domains.protein") / "configs"))
    gen = _generate_benchmark() if n_samples else None  # loaded now: later edits of that file cannot reach this run
    task = data.FAMILY
    recs = data.pfam_families(min_count=7, max_per_family=12, max_residues=None, seed=seed)
    train, test = data.split_by_label(recs, n_test=3, seed=seed)
    held = {r.id for r in test}
    benchmark_held = set(held)  # the benchmark's held-out sequences: never a reference in a validation run
    if validation:  # choices on the training side only: 2 per family of it become the evaluated set
        train, test = data.split_by_label(train, n_test=2, seed=seed + 1000)
        held |= {r.id for r in test}  # neither stage sees them, as the held-out sequences
    unlabelled = [r for r in data.pfam_families(min_count=1, max_per_family=None) if r.id not in held]
    unlabelled += data.ec_records()
    fasta = formats.write_fasta(((r.id, r.seq) for r in unlabelled), work / "stage1.fasta")
    tok = build_tokenizer()
    # whole records by default: the longest training record plus room for the prompt (as
    # benchmarks/protein_generate does), so the model reads every residue the 3-mer baseline reads
    msl = max_seq_length or max(256, max(len(r.seq) for r in recs) + 64)
    records, crops = data.fit_instruction_records(train, task, tok, msl)
    jsonl = formats.write_instructions(records, work / "instructions.jsonl")

    o1 = [f"train.output_dir={work / 's1'}", f"train.seed={seed}", "train.progress=false"]
    o1 += ([f"train.max_steps={s1_steps}"] if s1_steps else []) + list(s1_set)
    c1 = dataclasses.replace(load_config(PretrainConfig, cfgs / "pretrain_tiny.yaml", o1), train_files=[str(fasta)])
    t0 = time.perf_counter()
    s1 = run_stage_config(c1)
    o2 = [f"train.output_dir={work / 's2'}", f"train.seed={seed}", f"model.name_or_path={s1['merged']}",
          "train.progress=false", f"max_seq_length={msl}"] + ([f"train.max_steps={s2_steps}"] if s2_steps else [])
    o2 += list(s2_set)
    c2 = dataclasses.replace(load_config(InstructConfig, cfgs / "instruct_tiny.yaml", o2), train_files=[str(jsonl)])
    s2 = run_stage_config(c2)
    train_s = time.perf_counter() - t0
    model = s2["model"].eval()

    labels = sorted({r.label for r in train})
    seqs, y = [r.seq for r in test], [r.label for r in test]
    out = {"seed": seed, "n_train": len(train), "n_test": len(test), "labels": labels,
           "test_lengths": [len(s) for s in seqs], "crops": dataclasses.asdict(crops), "crop_message": crops.message(),
           "stage2_loss": [s2.get("first_loss"), s2.get("last_loss")], "train_seconds": train_s, "methods": {},
           "stage1_curve": _curve(s1), "stage2_curve": _curve(s2), "steps": [s1["steps"], s2["steps"]]}
    # raw per-candidate scores, held-out and training side: every variant in the report is computed from them
    for side, rs in (("test", test), ("train", train)):
        q = [r.seq for r in rs]
        out[f"scores_{side}"] = {k: classify._score_rows(model, tok, task, q, labels, k, c2.max_seq_length, 16, False)
                                 for k in ("determine", "bayes")}
        widest = data.widest_label(tok, labels, task.generate_prompt)
        out[f"bayes_tokens_{side}"] = [len(tok(data.generate_answer(tok, task, x, widest, c2.max_seq_length),
                                               add_special_tokens=False)["input_ids"]) + 1 for x in q]
        out[f"truth_{side}"] = [r.label for r in rs]
    for m in classify.METHODS:
        t0 = time.perf_counter()
        preds = classify.classify(model, tok, task, seqs, labels, m, max_seq_length=c2.max_seq_length, train=train)
        rep = classify.with_baselines(train, seqs, preds, y)
        if m == "probe":  # what cross-validation on the training sequences chose, and the probe's scores
            out["probe_choice"] = preds[0]["probe"]
            out["scores_test"]["probe"] = [p["scores"] for p in preds]
        out["methods"][m] = {"accuracy": rep["model_accuracy"], "seconds": time.perf_counter() - t0,
                             "n_malformed": rep["n_malformed"], "n_unknown_label": rep["n_unknown_label"],
                             "predictions": [p["pred"] for p in preds]}
        out["majority_accuracy"], out["kmer_lr_accuracy"] = rep["majority_accuracy"], rep["kmer_lr_accuracy"]
        out["majority_class"] = rep["majority_class"]
        out["kmer_predictions"] = rep["kmer_predictions"]
    out["truth"] = y
    out["without_fitting"] = answers_cut_without_fitting(seed, c2.max_seq_length)
    if n_samples:  # the same model's samples, for benchmarks/protein_generate (--from-classify)
        t0 = time.perf_counter()
        out["end_marker"] = gen.end_marker_stats(s1["merged"], s2["merged"], train, test,
                                                 [r.seq for r in unlabelled], seed, c1.max_residues, c1.block_size,
                                                 c1.whole_windows)
        real = data.pfam_families(min_count=7, max_per_family=None)
        if validation:  # samples judged against the family's sequences without the benchmark's held-out ones
            real = [r for r in real if r.id not in benchmark_held]
        out["generation_rows"] = [{"pipeline": "windows", "seed": seed, **r} for r in
                                  gen.sample_rows(s2["merged"], labels, real, n_samples, seed,
                                                  list(settings or gen.SETTINGS))]
        out["generation_seconds"] = time.perf_counter() - t0
    return out


def _generate_benchmark():
    """``benchmarks/protein_generate/run.py`` as a module (its ``sample_rows`` and ``SETTINGS``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("protein_generate_run", HERE.parent / "protein_generate" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _curve(stage: dict, n: int = 10) -> list[list[float]]:
    """(step, loss) at about ``n`` evenly spaced logged points of a stage's history."""
    pts = [(h["step"], h["loss"]) for h in stage["history"] if "loss" in h and "step" in h]
    return [list(p) for p in pts[::max(1, len(pts) // n)]] + ([list(pts[-1])] if pts else [])


def _run_seed(job: tuple) -> dict:
    """One seed in a temporary folder, on one CPU thread (a worker process when ``--jobs`` > 1); the
    result is also written to ``<out>/.partial/seed<N>.json`` at once, so a lost parent loses nothing."""
    import torch

    torch.set_num_threads(1)
    seed, s1_steps, s2_steps, msl, n_samples, out, s1_set, s2_set, validation, settings = job
    with tempfile.TemporaryDirectory() as d:
        run = one_seed(seed, Path(d), s1_steps, s2_steps, msl, n_samples, tuple(s1_set), tuple(s2_set), validation,
                       tuple(settings) if settings else None)
    part = Path(out)
    part.mkdir(parents=True, exist_ok=True)
    (part / f"seed{seed}.json").write_text(json.dumps(run), encoding="utf-8")
    print(json.dumps({k: run[k] for k in ("seed", "crop_message", "majority_accuracy", "kmer_lr_accuracy",
                                          "train_seconds")}
                     | {m: v["accuracy"] for m, v in run["methods"].items()}), flush=True)
    return run


def _log_softmax(row: dict[str, float]) -> dict[str, float]:
    top = max(row.values())
    lse = top + math.log(sum(math.exp(v - top) for v in row.values()))
    return {c: v - lse for c, v in row.items()}


def variant_predictions(run: dict, side: str = "test") -> dict[str, list[str]]:
    """Predictions of the likelihood methods and of the variants the report compares, from the raw scores:
    ``combined`` is log_softmax(determine) + log_softmax(bayes) over the candidates (``classify.py``);
    ``combined_per_residue`` divides the bayes score by its token count first (length-normalised)."""
    sc, ntok = run[f"scores_{side}"], run[f"bayes_tokens_{side}"]
    out: dict[str, list[str]] = {"determine": [], "bayes": [], "combined": [], "combined_per_residue": []}
    for d, b, n in zip(sc["determine"], sc["bayes"], ntok):
        ld, lb, lbn = _log_softmax(d), _log_softmax(b), _log_softmax({c: v / n for c, v in b.items()})
        rows = {"determine": d, "bayes": b, "combined": {c: ld[c] + lb[c] for c in d},
                "combined_per_residue": {c: ld[c] + lbn[c] for c in d}}
        for k, row in rows.items():
            out[k].append(max(row, key=row.get))
    return out


def _acc(pred: list[str], truth: list[str]) -> float:
    return sum(a == b for a, b in zip(pred, truth)) / len(truth)


def summarise(runs: list[dict]) -> dict:
    from adaptome.domains.protein import classify

    def ms(vals):
        return {"mean": statistics.mean(vals), "std": statistics.pstdev(vals), "per_seed": vals}

    s = {m: ms([r["methods"][m]["accuracy"] for r in runs]) for m in classify.METHODS
         if all(m in r["methods"] for r in runs)}
    s["majority"] = ms([r["majority_accuracy"] for r in runs])
    s["kmer_lr"] = ms([r["kmer_lr_accuracy"] for r in runs])
    cands = [m for m in CANDIDATES if m in s]
    best = max(cands, key=lambda m: (s[m]["mean"], -cands.index(m)))
    default = classify.DEFAULT_METHOD
    raw = [r for r in runs if "scores_test" in r]
    variants = {}
    if raw:
        for side in ("test", "train"):
            preds = [variant_predictions(r, side) for r in raw]
            variants[side] = {k: ms([_acc(p[k], r[f"truth_{side}"]) for p, r in zip(preds, raw)]) for k in preds[0]}
        conf: dict[str, Counter] = {}
        for r in raw:
            vp = variant_predictions(r)
            pred = vp[default] if default in vp else r["methods"][default]["predictions"]
            for t, p in zip(r["truth_test"], pred):
                conf.setdefault(t, Counter())[p] += 1
        variants["confusion_default"] = {t: dict(c) for t, c in sorted(conf.items())}
        kconf: dict[str, Counter] = {}
        for r in raw:
            for t, p in zip(r["truth_test"], r["kmer_predictions"]):
                kconf.setdefault(t, Counter())[p] += 1
        variants["confusion_kmer"] = {t: dict(c) for t, c in sorted(kconf.items())}
    return {"accuracy": s, "variants": variants, "best_likelihood_method": best, "default_method": default,
            "default_is_best": s[default]["mean"] >= s[best]["mean"],
            "default_matches_kmer": s[default]["mean"] >= s["kmer_lr"]["mean"],
            "malformed_generate": sum(r["methods"]["generate"]["n_malformed"] for r in runs),
            "unknown_generate": sum(r["methods"]["generate"]["n_unknown_label"] for r in runs),
            "n_predictions": sum(r["n_test"] for r in runs)}


def markdown(res: dict) -> str:
    s, a = res["summary"], res["summary"]["accuracy"]
    runs = res["runs"]
    val = res["config"].get("validation")
    preset = next((x.split("=", 1)[1] for x in res["config"].get("s1_set") or [] if x.startswith("model.preset=")),
                  "tiny")
    lines = [f"## protein: which label classifier by default (held-out Pfam sequences, {preset} LLaMA, CPU)"
             + (" -- VALIDATION split" if val else ""), ""]
    if val:
        lines += ["VALIDATION run: the evaluated sequences are 2 per family split off each seed's training side "
                  "(kept out of both stages); the benchmark's held-out sequences are not used. 'held-out' below "
                  "means these validation sequences.", ""]
    lines += [f"{len(runs)} seeds; each: {runs[0]['n_train']} training / {runs[0]['n_test']} held-out sequences of "
             f"{len(runs[0]['labels'])} Pfam families (full length, "
             f"{min(min(r['test_lengths']) for r in runs)}-{max(max(r['test_lengths']) for r in runs)} residues "
             "held out), both ProLLaMA stages with the tiny configs, instruction records of at most "
             f"{runs[0]['crops']['max_seq_length']} tokens."
             + "".join(f" Config overrides, stage {k[1]}: {' '.join(res['config'][k])}." for k in ("s1_set", "s2_set")
                       if res["config"].get(k)), "",
             "| classifier | mean accuracy | std | per seed |", "|---|---|---|---|"]
    names = {"determine": "model, `determine` (p(label | seq))", "bayes": "model, `bayes` (p(seq | label))",
             "combined": "model, `combined` (sum of both, each log-softmax-normalised)",
             "generate": "model, `generate` (greedy decoding, exact match)",
             "probe": "model, `probe` (logistic regression on mean-pooled hidden states, fitted on the training "
                      "sequences)",
             "majority": "majority class", "kmer_lr": "3-mer logistic regression"}
    for k in ("determine", "bayes", "combined", "generate", "probe", "majority", "kmer_lr"):
        if k not in a:
            continue  # results from before the method existed
        v = a[k]
        mark = " (default)" if k == s["default_method"] else ""
        lines.append(f"| {names[k]}{mark} | {v['mean']:.3f} | {v['std']:.3f} | "
                     + ", ".join(f"{x:.3f}" for x in v["per_seed"]) + " |")
    d = s["default_method"]
    lines += ["", f"Best model method ({', '.join(CANDIDATES)}) by mean held-out accuracy: "
              f"**{s['best_likelihood_method']}** "
              f"({a[s['best_likelihood_method']]['mean']:.3f}); the default `classify.DEFAULT_METHOD` is "
              f"**{d}**, which " + ("is" if s["default_is_best"] else "is NOT") + " the best.",
              f"Target \"the default at least matches the 3-mer baseline\": default {a[d]['mean']:.3f} vs 3-mer "
              f"{a['kmer_lr']['mean']:.3f} -> " + ("met" if s["default_matches_kmer"] else "NOT met") + ".",
              f"`generate`: {s['malformed_generate']} malformed answers and {s['unknown_generate']} well-formed "
              f"labels outside the candidates in {s['n_predictions']} predictions (counted as wrong).", "",
              ] + probe_lines(res) + variant_lines(res) + [
              "Instruction records (per seed): " + "; ".join(f"seed {r['seed']}: {r['crop_message']}" for r in runs)
              + ".",
              "Without fitting (ProLLaMA's cut of the token row at the limit), of the same records "
              + "; ".join(f"seed {r['seed']}: {w['determine_answer_cut']} understanding records would have lost "
                          f"their label (all or part of `Family=<...>` and its `</s>`) and "
                          f"{w['generate_answer_cut']} generation records the end of their sequence, of "
                          f"{w['n_records']}" for r in runs for w in [r["without_fitting"]]) + ".", "",
              f"Time: {res['seconds']:.0f} s wall in all (one thread per seed, seeds in "
              f"{res['config'].get('jobs', 3)} parallel processes, on a shared 2-core machine). "
              f"git {res['git']}, torch {res['versions']['torch']}, "
              f"transformers {res['versions']['transformers']}, python {res['versions']['python']}."
              + (f" Assembled: {res['config']['assembled']}." if res["config"].get("assembled") else ""), "",
              f"Reproduce: `{command(res['config'])}`", ""]
    return "\n".join(lines)


def command(cfg: dict) -> str:
    """The reproducing command of a run with this ``config`` (the options that differ from the defaults)."""
    out = CMD.replace("--jobs 2", f"--jobs {cfg.get('jobs', 2)}")
    if cfg.get("samples", 12) != 12:
        out += f" --samples {cfg['samples']}"
    for key, flag in (("s1_steps", "--s1-steps"), ("s2_steps", "--s2-steps"), ("max_seq_length", "--max-seq-length")):
        if cfg.get(key):
            out += f" {flag} {cfg[key]}"
    for key, flag in (("s1_set", "--s1-set"), ("s2_set", "--s2-set"), ("settings", "--settings")):
        if cfg.get(key):
            out += f" {flag} " + " ".join(cfg[key])
    if cfg.get("validation"):
        out += " --validation"
    if cfg.get("name", "results") != "results":
        out += f" --name {cfg['name']}"
    return out


def probe_lines(res: dict) -> list[str]:
    """What the probe's cross-validation on the training sequences chose per seed (absent in older results)."""
    runs = [r for r in res["runs"] if "probe_choice" in r]
    if not runs:
        return []
    return ["`probe`: layers and C chosen per seed by 3-fold cross-validation on that seed's training sequences only "
            "(grid: `last` / `all` layers x C in 0.01, 0.1, 1, 10): " + "; ".join(
                f"seed {r['seed']}: {r['probe_choice']['layers']}, C={r['probe_choice']['C']:g} (CV accuracy "
                f"{max(r['probe_choice']['cv_accuracy'].values()):.3f})" for r in runs) + ".", ""]


def variant_lines(res: dict) -> list[str]:
    """The report's part computed from the raw per-candidate scores (absent in results without them)."""
    v = res["summary"].get("variants") or {}
    if not v:
        return []
    runs = [r for r in res["runs"] if "scores_test" in r]
    names = {"determine": "`determine`", "bayes": "`bayes`", "combined": "`combined` (bayes summed over residues)",
             "combined_per_residue": "`combined`, bayes per residue (length-normalised)"}
    lines = ["", "From the raw scores: held-out and training-side accuracy (the model's own training sequences: "
             "how far training got).", "", "| method | held-out mean | per seed | training side mean | per seed |",
             "|---|---|---|---|---|"]
    for k, name in names.items():
        te, tr = v["test"][k], v["train"][k]
        lines.append(f"| {name} | {te['mean']:.3f} | " + ", ".join(f"{x:.3f}" for x in te["per_seed"])
                     + f" | {tr['mean']:.3f} | " + ", ".join(f"{x:.3f}" for x in tr["per_seed"]) + " |")
    d = res["summary"]["default_method"]
    lines += ["", f"Held-out confusion over the seeds (true family: predicted counts), default `{d}` | 3-mer LR:", ""]
    lines += [f"- {t}: " + ", ".join(f"{p} {n}" for p, n in sorted(c.items(), key=lambda x: -x[1])) + " | "
              + ", ".join(f"{p} {n}" for p, n in sorted(v["confusion_kmer"][t].items(), key=lambda x: -x[1]))
              for t, c in v["confusion_default"].items()]
    lines += ["", "Loss curves (step: loss), stage 2: " + "; ".join(
        f"seed {r['seed']} ({r['steps'][1]} steps) " + ", ".join(f"{int(a)}: {b:.2f}" for a, b in r["stage2_curve"])
        for r in runs) + ".", ""]
    return lines


def _git() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=HERE).stdout.strip()


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--s1-steps", type=int, default=None, help="override the tiny config's stage-1 steps")
    ap.add_argument("--s2-steps", type=int, default=None, help="override the tiny config's stage-2 steps")
    ap.add_argument("--max-seq-length", type=int, default=None,
                    help="stage-2 token limit (default: the longest record whole, at least 256)")
    ap.add_argument("--samples", type=int, default=12,
                    help="also sample this many sequences per family with every setting of benchmarks/protein_generate "
                    "(0: none); that benchmark reads them with --from-classify")
    ap.add_argument("--s1-set", nargs="*", default=[], help="stage-1 config overrides, e.g. whole_windows=true")
    ap.add_argument("--s2-set", nargs="*", default=[], help="stage-2 config overrides, e.g. train.weight_decay=0.1")
    ap.add_argument("--settings", nargs="+", default=None,
                    help="with --samples: only these settings of benchmarks/protein_generate's SETTINGS (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (1 thread each)")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for results.json / results.md")
    ap.add_argument("--name", default="results", help="file stem of the outputs: <name>.json / <name>.md")
    ap.add_argument("--validation", action="store_true",
                    help="evaluate on 2 sequences per family split off the TRAINING side (held out from both "
                    "stages too); the held-out sequences are not used: for choosing settings")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite results.md from results.json (the summary recomputed with the current default)")
    args = ap.parse_args()
    if args.render_only:
        stem = ".partial" if args.name == "results" else f".partial-{args.name}"
        part = sorted((args.out / stem).glob("seed*.json"))
        if part:  # seeds finished by workers whose parent was lost: assemble them
            runs = [json.loads(x.read_text(encoding="utf-8")) for x in part]
            res = {"config": {"seeds": [r["seed"] for r in runs], "assembled_from_partial": True},
                   "git": _git(), "versions": _versions(), "seconds": float("nan"), "runs": runs}
        else:
            res = json.loads((args.out / f"{args.name}.json").read_text(encoding="utf-8"))
        for r in res["runs"]:
            r.setdefault("without_fitting", answers_cut_without_fitting(r["seed"], r["crops"]["max_seq_length"]))
        res["summary"] = summarise(res["runs"])
        (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
        (args.out / f"{args.name}.md").write_text(markdown(res), encoding="utf-8")
        print(markdown(res))
        return
    t0 = time.perf_counter()
    partial = args.out / (".partial" if args.name == "results" else f".partial-{args.name}")  # one per run
    if args.settings:
        known = _generate_benchmark().SETTINGS
        unknown = sorted(set(args.settings) - set(known))
        if unknown:
            raise SystemExit(f"--settings: unknown {unknown}; known: {sorted(known)}")
    jobs = [(seed, args.s1_steps, args.s2_steps, args.max_seq_length, args.samples, str(partial), args.s1_set,
             args.s2_set, args.validation, args.settings) for seed in args.seeds]
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
            runs = list(ex.map(_run_seed, jobs))
    else:
        runs = [_run_seed(j) for j in jobs]
    res = {"config": {"seeds": args.seeds, "s1_steps": args.s1_steps, "s2_steps": args.s2_steps,
                      "s1_set": args.s1_set, "s2_set": args.s2_set, "name": args.name,
                      "validation": args.validation, "settings": args.settings,
                      "max_seq_length": args.max_seq_length, "samples": args.samples, "jobs": args.jobs},
           "git": _git(), "versions": _versions(),
           "seconds": time.perf_counter() - t0, "runs": runs, "summary": summarise(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    (args.out / f"{args.name}.md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))


if __name__ == "__main__":
    main()
