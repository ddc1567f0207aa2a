"""results.md for the compression benchmark: every sentence computed from results.json."""

from __future__ import annotations


def _f(x: float, d: int = 3) -> str:
    return f"{x:.{d}f}"


def _find(rows, method, budget=None, fisher=False):
    for r in rows:
        same = budget is None or abs(r["budget"] - budget) < 1e-9
        if r["method"] == method and bool(r.get("fisher")) == fisher and same:
            return r
    return None


def write_markdown(res: dict) -> str:
    v = res["versions"]
    out = ["### Compression: parameters / bits against held-out perplexity", "",
           f"Command: `{res['command']}` (git {res['git_commit'][:10]}, torch {v['torch']}, transformers "
           f"{v['transformers']}, peft {v['peft']}, scipy {v['scipy']}; {res['seconds']:.0f} s on CPU, "
           "1 thread).", "",
           f"Tiny models pretrained for {res['pretrain_steps']} steps through `fit` on `{res['data']}` (ungapped "
           f"Pfam seed members; every 5th member of each family held out for perplexity; character tokens; "
           f"BERT: 15 % masks from a fixed seed). Every "
           f"compressed model is then fine-tuned for {res['finetune_steps']} steps at lr {res['lr']} on what its "
           "method trains (WeLore: LRC factors; LRT: both factors; DSFormer: D and the latent S; LQ-LoRA / LoftQ: "
           "the LoRA factors over a frozen Q). 'kept bits' = stored bits of the target matrices / their dense fp32 "
           "bits (factors and low-rank parts counted at 32 bits, DSFormer indices at their stored width (uint8 / "
           "int16 / int32; ⌈log2 r⌉ bits in results made before that change), NF codes and "
           "scales at their packed sizes). 'trainable' counts DSFormer's dense latent S (r x in), which is not "
           "stored.", "", "![curves](compress/curves.png)", ""]
    for kind, m in res["models"].items():
        out += [f"**tiny {m['architecture']}** ({m['params']:,} parameters): dense perplexity "
                f"{_f(m['dense_ppl'])}; dense with all weights trained for the same {res['finetune_steps']} "
                f"steps {_f(m['dense_finetuned_ppl'])}; baseline (character frequencies of the training text, "
                f"no model) {_f(m['unigram_ppl'])}. The model is {(1 - m['dense_ppl'] / m['unigram_ppl']) * 100:.1f} % "
                "below that baseline, so held-out perplexity can only move within that margin; the relative weight "
                "error ‖W − Ŵ‖/‖W‖ of the target matrices measures the compression itself.",
                "", "| method | budget | kept params | kept bits | Q bits/param | rel. error | ppl compressed | "
                "ppl + fine-tuning | trainable |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in m["runs"]:
            name = r["method"] + (" + Fisher" if r.get("fisher") else "")
            out.append(f"| {name} | {r['budget']:g} | {_f(r['kept_fraction_params'])} | "
                       f"{_f(r['kept_fraction_bits'])} | "
                       f"{_f(r['q_bits_per_param'], 2) if 'q_bits_per_param' in r else ''} | "
                       f"{_f(r['rel_error'], 4) if 'rel_error' in r else ''} | {_f(r['ppl_after'])} | "
                       f"{_f(r['ppl_finetuned'])} | {r.get('trainable', '')} |")
        out.append("")
        rows = m["runs"]
        lq3, lq35, lq25 = _find(rows, "lqlora", 3.0), _find(rows, "lqlora", 3.5), _find(rows, "lqlora", 2.5)
        lf3, lf2 = _find(rows, "loftq", 3.5), _find(rows, "loftq", 2.5)
        if lq3 and lf3:
            ok = lq3["rel_error"] < lf3["rel_error"]
            out.append(f"- Target LQ-LoRA at 3 bits (mixed, {lq3['q_bits_per_param']:.2f} bits per parameter incl. "
                       f"scales) below LoftQ at uniform NF3 (3.5 bits incl. fp32 scales): relative error "
                       f"{_f(lq3['rel_error'], 4)} vs {_f(lf3['rel_error'], 4)}: **{'met' if ok else 'not met'}**.")
        for lq, lf, b in ((lq35, lf3, 3.5), (lq25, lf2, 2.5)):
            if lq and lf:
                out.append(f"- At equal {b} bits per parameter: LQ-LoRA error {_f(lq['rel_error'], 4)} vs LoftQ "
                           f"{_f(lf['rel_error'], 4)} ({lq['rel_error'] / lf['rel_error']:.2f}x); perplexity after "
                           f"fine-tuning {_f(lq['ppl_finetuned'])} vs {_f(lf['ppl_finetuned'])}.")
        we = _find(rows, "welore", 0.5)
        if we:
            ratio = we["ppl_finetuned"] / m["dense_ppl"]
            out.append(f"- Target WeLore at 50 % with LRC-only fine-tuning within 10 % of the uncompressed "
                       f"perplexity: {_f(we['ppl_finetuned'])} vs {_f(m['dense_ppl'])} ({(ratio - 1) * 100:+.1f} %): "
                       f"**{'met' if ratio <= 1.10 else 'not met'}** (before fine-tuning {_f(we['ppl_after'])}; "
                       f"{we['lrc']} LRC matrices, threshold {we['threshold']:.4f}).")
        worst = max(rows, key=lambda r: r["ppl_after"])
        spread = [r["ppl_finetuned"] / m["dense_ppl"] - 1 for r in rows]
        err = _f(worst.get("rel_error", float("nan")), 3)
        out.append(f"- Compression alone: perplexity from {_f(m['dense_ppl'])} (dense) up to {_f(worst['ppl_after'])} "
                   f"({worst['method']} at {worst['budget']:g}, weight error {err}); after fine-tuning every run "
                   f"lies between {min(spread) * 100:+.1f} % and {max(spread) * 100:+.1f} % "
                   f"of dense. The dense model trained for the same steps moves "
                   f"{(m['dense_finetuned_ppl'] / m['dense_ppl'] - 1) * 100:+.1f} % (more training of all weights on "
                   "these few sequences overfits when positive).")
        best = {}
        for r in rows:
            if r["method"] in ("welore", "lrt", "dsformer") and abs(r["budget"] - 0.5) < 1e-9:
                best[r["method"]] = r["ppl_finetuned"]
        if best:
            order = sorted(best, key=best.get)
            out.append("- At 50 % of the parameters, after fine-tuning: " +
                       ", ".join(f"{k} {_f(best[k])}" for k in order) + f" (best: {order[0]}).")
        out.append("")
    return "\n".join(out) + "\n"
