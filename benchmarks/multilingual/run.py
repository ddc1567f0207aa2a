"""Multilingual benchmark: language-adapter methods side by side, SIB-200 with and without them, step costs.

    nice -n 10 .venv/bin/python benchmarks/multilingual/run.py --out benchmarks/multilingual [--quick]

1. A tiny XLM-R base pretrained from scratch on the shipped text of hau, yor, swa (``pretrain_tiny_base``).
2. Per language, ``seq_bn``, ``seq_bn_inv`` and LoRA (``lora_native``, r 8, alpha 8, query + value)
   language adapters with the same budget (steps, batch, lr): trainable parameters, seconds per step,
   held-out pseudo-perplexity of base and adapter.
3. SIB-200 dev macro-F1 per language, seeds 1-3: task adapter alone, stacked on each language adapter,
   full fine-tuning of the tiny base, beside the majority class and the character n-gram baseline.
4. Step cost: a stacked task-adapter step vs a task-adapter step without the language adapter (target
   <= 1.1x), median of timed steps on the same batches.
5. Pseudo-perplexity: all masked copies of a sentence in one forward pass vs one forward pass per token
   (target >= 5x), on the same sentences, with the two values compared.

Writes ``results.json`` (every number, the command, git commit, package versions) and ``results.md``
(every sentence computed from those numbers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
LANGS = {"hau": "hau_Latn", "yor": "yor_Latn", "swa": "swh_Latn"}
METHODS = {"seq_bn": {"reduction_factor": 16}, "seq_bn_inv": {"reduction_factor": 16, "inv_reduction_factor": 2},
           "lora_native": {"r": 8, "lora_alpha": 8, "target_modules": ["query", "value"]}}


def _versions() -> dict:
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def step_cost(base: str, lang_adapter: Path, sib: Path, n_steps: int = 20, max_length: int = 64) -> dict:
    """Median seconds of a training step (forward + backward + AdamW) with and without the language adapter."""
    from adaptome.domains.multilingual.task_train import TaskConfig, build_task_model, make_datasets, read_task_data
    from adaptome.domains.multilingual.tasks import PadCollator

    out = {}
    for mode, adapters in (("task", []), ("stack", [str(lang_adapter)])):
        cfg = TaskConfig(base=base, task="topic", train_file=str(sib / "train.tsv"), eval_file=str(sib / "dev.tsv"),
                         mode=mode, lang_adapters=adapters, max_length=max_length)
        train, dev, labels = read_task_data("topic", cfg.train_file, cfg.eval_file)
        torch.manual_seed(0)
        tok, model = build_task_model(cfg, labels)
        data, _ = make_datasets(cfg, tok, train, dev[:1], labels)
        collate = PadCollator(tok.pad_token_id)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        times = []
        for i in range(n_steps + 3):
            batch = collate([data[j] for j in range(16 * i, 16 * i + 16)])
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 3:  # warm-up steps not timed
                times.append(time.perf_counter() - t0)
        out[mode] = statistics.median(times)
    out["ratio"] = out["stack"] / out["task"]
    return out


def pppl_speed(base: str, text: Path, n: int, max_length: int = 64, repeats: int = 3) -> dict:
    """Wall time of batched vs one-forward-per-token pseudo-perplexity on ``n`` sentences: the median of
    ``repeats`` alternating runs of each (alternating, so load on the machine hits both alike)."""
    from adaptome.domains.multilingual.base import load_base
    from adaptome.domains.multilingual.mlm import pseudo_perplexity, pseudo_perplexity_naive
    from adaptome.domains.multilingual.readers import read_text

    tok, model = load_base(base)
    sents = read_text(text)[:n]
    t_b, t_n = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        batched = pseudo_perplexity(model, tok, sents, max_length)
        t_b.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive = pseudo_perplexity_naive(model, tok, sents, max_length)
        t_n.append(time.perf_counter() - t0)
    b, nv = statistics.median(t_b), statistics.median(t_n)
    return {"sentences": len(sents), "repeats": repeats, "batched_s": b, "naive_s": nv, "speedup": nv / b,
            "pppl_batched": batched, "pppl_naive": naive, "command": " ".join(["nice -n 10", "python"] + sys.argv),
            "git_commit": _commit()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "multilingual"))
    ap.add_argument("--quick", action="store_true", help="fewer steps and seeds (a smoke run, not the results)")
    ap.add_argument("--la-steps", type=int, default=300, help="language-adapter steps (every method)")
    ap.add_argument("--task-steps", type=int, default=300, help="task steps per seed")
    ap.add_argument("--base-steps", type=int, default=400, help="tiny base pretraining steps")
    ap.add_argument("--pppl-only", action="store_true",
                    help="re-measure only the pseudo-perplexity speed (same base set-up) into the existing results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.pppl_only:
        return pppl_only(args)
    from adaptome.domains.multilingual.base import TinyBaseConfig, pretrain_tiny_base
    from adaptome.domains.multilingual.evaluate import majority_baseline, ngram_baseline
    from adaptome.domains.multilingual.lang_adapter import LanguageAdapterConfig, train_language_adapter
    from adaptome.domains.multilingual.prepare import prepare_text
    from adaptome.domains.multilingual.task_train import TaskConfig, read_task_data, train_task

    quick = args.quick
    la_steps, task_steps, seeds = (20, 20, [1]) if quick else (args.la_steps, args.task_steps, [1, 2, 3])
    base_steps = 30 if quick else args.base_steps
    work = Path(args.out) / "_work"
    data = ROOT / "domains" / "multilingual" / "data"
    t_start = time.perf_counter()
    for lang in LANGS:
        prepare_text([data / "text" / f"{lang}.txt"], work / "text" / lang, seed=0)
    base = work / "base"
    pre = pretrain_tiny_base([work / "text" / lang / "train.txt" for lang in LANGS], base,
                             TinyBaseConfig(steps=base_steps, max_length=64, batch_size=32, lr=5e-3), overwrite=True)
    results: dict = {"command": " ".join(["nice -n 10", sys.executable.split("/")[-1]] + sys.argv),
                     "git_commit": _commit(), "versions": _versions(), "quick": quick,
                     "base": {k: pre[k] for k in ("parameters", "sentences", "loss_first", "loss_last")},
                     "budget": {"language_adapter_steps": la_steps, "task_steps": task_steps, "seeds": seeds,
                                "batch_size": 16, "max_length": 64},
                     "language_adapters": {}, "sib200": {}}
    for lang, sib_lang in LANGS.items():
        las = {}
        for method, opts in METHODS.items():
            s = train_language_adapter(LanguageAdapterConfig(
                base=str(base), method=method, options=opts, language=lang, source="text",
                train_file=str(work / "text" / lang / "train.txt"), eval_file=str(work / "text" / lang / "test.txt"),
                eval_sentences=100, steps=la_steps, batch_size=16, lr=1e-3 if method != "lora_native" else 3e-3,
                max_length=64), work / f"la_{lang}_{method}", overwrite=True)
            las[method] = {k: s[k] for k in ("trainable_parameters", "step_seconds", "pppl_base", "pppl_adapter")}
        results["language_adapters"][lang] = las
        sib = data / "sib200" / sib_lang
        train, dev, _ = read_task_data("topic", str(sib / "train.tsv"), str(sib / "dev.tsv"))
        rows = {"majority class": [majority_baseline("topic", train, dev)],
                "char n-gram logreg": [ngram_baseline("topic", train, dev)]}
        setups = [("none", "task", [])] + [(m, "stack", [str(work / f"la_{lang}_{m}")]) for m in METHODS] + [
            ("full fine-tuning", "full", [])]
        for name, mode, adapters in setups:
            s = train_task(TaskConfig(base=str(base), task="topic", language=lang, train_file=str(sib / "train.tsv"),
                                      eval_file=str(sib / "dev.tsv"), mode=mode, lang_adapters=adapters,
                                      steps=task_steps, batch_size=16, lr=1e-2 if mode != "full" else 1e-3,
                                      max_length=64, seeds=seeds), work / f"tc_{lang}_{mode}_{name}", overwrite=True)
            rows[name] = [r["macro_f1"] for r in s["runs"]]
        results["sib200"][lang] = rows
    results["step_cost"] = step_cost(str(base), work / "la_hau_seq_bn", data / "sib200" / "hau_Latn")
    results["pppl_speed"] = pppl_speed(str(base), work / "text" / "hau" / "test.txt", 10 if quick else 30)
    results["total_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "results.md").write_text(render(results), encoding="utf-8")
    print(render(results))


def pppl_only(args) -> None:
    """Pretrain the same tiny base, time pseudo-perplexity, and replace that entry of results.json."""
    from adaptome.domains.multilingual.base import TinyBaseConfig, pretrain_tiny_base
    from adaptome.domains.multilingual.prepare import prepare_text

    work = Path(args.out) / "_work"
    data = ROOT / "domains" / "multilingual" / "data"
    for lang in LANGS:
        prepare_text([data / "text" / f"{lang}.txt"], work / "text" / lang, seed=0)
    pretrain_tiny_base([work / "text" / lang / "train.txt" for lang in LANGS], work / "base",
                       TinyBaseConfig(steps=args.base_steps, max_length=64, batch_size=32, lr=5e-3), overwrite=True)
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    results["pppl_speed"] = pppl_speed(str(work / "base"), work / "text" / "hau" / "test.txt", 30)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "results.md").write_text(render(results), encoding="utf-8")
    print(render(results))


def _ms(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f}"


def render(r: dict) -> str:
    b = r["budget"]
    lines = [f"# Multilingual benchmark{' (quick smoke run, not results)' if r['quick'] else ''}", "",
             f"Command: `{r['command']}`; git commit `{r['git_commit']}`; versions {r['versions']}; "
             f"{r['total_seconds'] / 60:.1f} min in total.", "",
             f"Tiny XLM-R base: {r['base']['parameters']:,} parameters pretrained from scratch on "
             f"{r['base']['sentences']} sentences (MLM loss {r['base']['loss_first']:.2f} -> "
             f"{r['base']['loss_last']:.2f}).", "",
             f"## Language adapters ({b['language_adapter_steps']} steps, batch {b['batch_size']}, "
             "same for every method)", "",
             "| language | method | trainable params | s / step | PPPL base | PPPL adapter |",
             "|---|---|---|---|---|---|"]
    for lang, las in r["language_adapters"].items():
        for m, s in las.items():
            lines.append(f"| {lang} | {m} | {s['trainable_parameters']:,} | {s['step_seconds']:.3f} | "
                         f"{s['pppl_base']:.1f} | {s['pppl_adapter']:.1f} |")
    best = {lang: min(las, key=lambda m: las[m]["pppl_adapter"]) for lang, las in r["language_adapters"].items()}
    lines += ["", "Lowest held-out pseudo-perplexity per language: "
              + ", ".join(f"{lang} {m}" for lang, m in best.items()) + ".", "",
              f"## SIB-200 dev macro-F1 (seeds {b['seeds']}, {b['task_steps']} steps; mean +- sd)", "",
              "| language | " + " | ".join(next(iter(r["sib200"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(r["sib200"].values())))]
    for lang, rows in r["sib200"].items():
        lines.append(f"| {lang} | " + " | ".join(_ms(v) for v in rows.values()) + " |")
    for lang, rows in r["sib200"].items():
        none = statistics.mean(rows["none"])
        diffs = ", ".join(f"{m} {statistics.mean(rows[m]) - none:+.3f}" for m in METHODS)
        maj, ngram = rows["majority class"][0], rows["char n-gram logreg"][0]
        lines.append(f"\n{lang}: stacked minus task adapter alone: {diffs}; task adapter alone minus majority "
                     f"{none - maj:+.3f}; minus n-gram {none - ngram:+.3f}.")
    sc, ps = r["step_cost"], r["pppl_speed"]
    lines += ["", "## Costs", "",
              f"Stacked task-adapter step {sc['stack'] * 1000:.1f} ms vs task adapter alone "
              f"{sc['task'] * 1000:.1f} ms: {sc['ratio']:.2f}x (target <= 1.1x: "
              f"{'met' if sc['ratio'] <= 1.1 else 'NOT met'}).", "",
              f"Pseudo-perplexity of {ps['sentences']} sentences: batched {ps['batched_s']:.2f} s vs one forward "
              f"per masked token {ps['naive_s']:.2f} s, {ps['speedup']:.1f}x (target >= 5x: "
              f"{'met' if ps['speedup'] >= 5 else 'NOT met'}); values {ps['pppl_batched']:.4f} and "
              f"{ps['pppl_naive']:.4f}"
              + (f" (median of {ps['repeats']} alternating runs; measured by `{ps['command']}` at commit "
                 f"`{ps['git_commit']}`)." if "command" in ps else ".")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
