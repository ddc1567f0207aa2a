"""The multilingual part of ``adaptome quickstart`` (CPU, about a minute on 2 cores).

1. ``prepare-text`` on the shipped Hausa, Yoruba and Swahili text (80/10/10 splits);
2. a tiny XLM-R-architecture masked LM pretrained from scratch on the training splits of all
   three, with a Unigram tokenizer, saved as a transformers folder and reloaded by path;
3. a ``seq_bn`` Hausa language adapter: held-out pseudo-perplexity of the base and the adapter;
4. SIB-200 Hausa topic classification with a task adapter, alone and stacked on the frozen
   language adapter (2 seeds each), reloaded and scored by ``evaluate`` beside the majority-class
   and character n-gram baselines: the table.

Every step goes through the same library functions as the ``adaptome multilingual`` commands.
Not covered here: NER, sentiment, fusion and the other adapter methods (see the tests and the
benchmark).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path


def data_dir() -> Path:
    return Path(str(files("adaptome.domains.multilingual") / "data"))


def run(out: Path, steps: int = 100) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than two competing ones on a shared machine
    try:
        return _run(Path(out), steps)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, steps: int) -> dict:
    from rich.console import Console

    from adaptome.domains.multilingual.base import TinyBaseConfig, pretrain_tiny_base
    from adaptome.domains.multilingual.evaluate import evaluate_task_runs, to_csv, to_markdown
    from adaptome.domains.multilingual.lang_adapter import LanguageAdapterConfig, train_language_adapter
    from adaptome.domains.multilingual.prepare import prepare_text
    from adaptome.domains.multilingual.task_train import TaskConfig, train_task

    console = Console()
    data = data_dir()
    langs = ["hau", "yor", "swa"]
    for lang in langs:
        prepare_text([data / "text" / f"{lang}.txt"], out / "text" / lang, seed=0)
    base = out / "base"
    pre = pretrain_tiny_base([out / "text" / lang / "train.txt" for lang in langs], base,
                             TinyBaseConfig(steps=steps, max_length=64, batch_size=32))
    console.print(f"tiny XLM-R base ({pre['parameters']:,} parameters) pretrained on {pre['sentences']} sentences "
                  f"of {', '.join(langs)}: MLM loss {pre['loss_first']:.2f} -> {pre['loss_last']:.2f}; saved to {base}")
    la = train_language_adapter(LanguageAdapterConfig(
        base=str(base), method="seq_bn", options={"reduction_factor": 2}, language="hau", source="text",
        train_file=str(out / "text" / "hau" / "train.txt"), eval_file=str(out / "text" / "hau" / "test.txt"),
        eval_sentences=40, steps=steps, batch_size=16, lr=3e-3, max_length=64), out / "lang_adapter_hau")
    console.print(f"seq_bn language adapter (hau, {la['trainable_parameters']:,} trainable parameters): held-out "
                  f"pseudo-perplexity {la['pppl_base']:.1f} (base) -> {la['pppl_adapter']:.1f} (adapter)")
    sib = data / "sib200" / "hau_Latn"
    runs = []
    for name, mode, adapters in (("task_only", "task", []), ("stacked", "stack", [str(out / "lang_adapter_hau")])):
        cfg = TaskConfig(base=str(base), task="topic", language="hau", train_file=str(sib / "train.tsv"),
                         eval_file=str(sib / "dev.tsv"), mode=mode, lang_adapters=adapters, steps=steps,
                         batch_size=16, lr=1e-2, max_length=64, seeds=[1, 2])
        train_task(cfg, out / name)
        runs.append(out / name)
    rows = evaluate_task_runs(runs)
    table = to_markdown(rows)
    (out / "results.csv").write_text(to_csv(rows), encoding="utf-8")
    (out / "results.md").write_text(table, encoding="utf-8")
    console.print("SIB-200 hau dev, macro-F1 (reloaded from the saved adapters):")
    console.print(table, markup=False)  # adapter names hold brackets: seq_bn[text]

    def mean(adapter: str) -> float:
        vals = [r["value"] for r in rows if r["adapter"] == adapter]
        return sum(vals) / len(vals)

    summary = {"base_parameters": pre["parameters"], "mlm_loss": [pre["loss_first"], pre["loss_last"]],
               "pppl_base": la["pppl_base"], "pppl_lang_adapter": la["pppl_adapter"],
               "sib200_hau_macro_f1": {r: mean(r) for r in dict.fromkeys(x["adapter"] for x in rows)}}
    summary["ok"] = (la["pppl_adapter"] < la["pppl_base"]
                     and summary["sib200_hau_macro_f1"]["none"] > summary["sib200_hau_macro_f1"]["majority class"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
