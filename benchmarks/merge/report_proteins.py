"""The protein setting's part of results.md (``report.py`` writes the rest): its setup paragraph, the
left-out families, the pooled retention and the sizes, every sentence computed from results_proteins.json."""

from __future__ import annotations

import json
import statistics

from report import (
    HERE,
    LEGO,
    MERGES,
    MIN_GAIN,
    PEFT_FACTOR_MERGES,
    RANK,
    RIVALS,
    _clusters,
    aggregate,
    best_on_val,
    header,
    measurable,
    own_gain,
    readers,
    table,
    tasks_of,
    variants,
    verdict,
)


def describe_proteins(res: dict) -> str:
    """The protein setting's paragraph: base model, families, splits, LoRA training and its choice."""
    a, tasks, names = res["args"], tasks_of(res), {t: t for t in tasks_of(res)}
    seqs, blocks = res["sequences"], res["blocks"]
    sweep = json.loads((HERE / "protein_sweep.json").read_text())
    base_val = sweep["base_val_nll"]
    length = lambda x: f"{x['steps']} steps" if "steps" in x else f"{x['epochs']:g} epochs"  # noqa: E731
    tried = "; ".join(f"{length(x)} at lr {x['lr']:g}: " + ", ".join(f"{base_val[t] - x[t]:.3f}" for t in tasks)
                      for x in sweep["own_val_nll"])
    lr = a.get("lora_lr", 5e-3)
    ran = {"epochs": a["epochs"]} if a.get("epochs") else {"steps": a["steps"]}
    best = max(sweep["own_val_nll"], key=lambda x: statistics.mean(base_val[t] - x[t] for t in tasks))
    is_best = all(best.get(k) == ran.get(k) for k in ("steps", "epochs")) and best["lr"] == lr
    never = [t for t in tasks if all(x[t] >= base_val[t] for x in sweep["own_val_nll"])]
    return ("Tiny LLaMA (hidden 64, 2 layers, the protein domain's character tokenizer, blocks of 128, "
            "sequences packed with </s> between them) trained fully for "
            f"{a['base_steps']} steps on every shipped protein sequence outside the three families "
            f"({res['base_sequences']} sequences, {res['base_residues']} residues, {res['generic_blocks']} blocks: "
            "the package's nrPDB-EC subset, the other Pfam seeds, the TEM-1 wild type; "
            f"{res['family_chains_dropped']} chains of the families and {res['homologs_dropped']} sequences sharing "
            "many 5-mers with a family left out): the base. Three families, the only ones the shipped and shared data "
            "hold with enough sequences for three splits: Cyclin_N (the shipped Pfam seed, 95 sequences; the other "
            "shipped Pfam seeds hold at most 11), serine/threonine protein kinases (76 PDB chains with EC 2.7.11.*) "
            "and beta-lactamases (18 chains with EC 3.5.2.6), both from DeepFRI's nrPDB-EC test split "
            "(benchmarks/merge/data, made by make_families.py). Three peft LoRAs (rank "
            f"{RANK}, alpha {2 * RANK}, attention + MLP) trained from the base for " +
            (f"{a['epochs']:g} epochs (ceil(epochs x training blocks / 16) steps per family)" if a.get("epochs")
             else f"{a['steps']} steps") + f" (batch 16, lr {lr:g}). Per family a fixed shuffle holds out max(5, 15 %) "
            "of the sequences as the test split and as many as the validation split (the only split any choice "
            "below is made on; benchmarks/merge/proteins.py), the rest is training data (training sequences / "
            "blocks " + ", ".join(f"{names[t]} {seqs[t]['train']} / {blocks[t]['train']}" for t in tasks) +
            "; validation " + ", ".join(f"{seqs[t]['val']} / {blocks[t]['val']}" for t in tasks) + "; test " +
            ", ".join(f"{seqs[t]['held_out']} / {blocks[t]['held_out']}" for t in tasks) + "). The LoRA training "
            "length and learning rate were chosen on the validation gain of seed 0's LoRAs (benchmarks/merge/"
            "protein_sweep.json; own-LoRA validation gain on " + ", ".join(tasks) + " in nats per token: " + tried +
            "); the run's setting is " + ("the one with the largest mean gain." if is_best else
                                          f"NOT the one with the largest mean gain ({length(best)} at lr "
                                          f"{best['lr']:g}).") +
            ("" if not never else " In no setting tried did the own LoRA of " + ", ".join(never) + " beat the base "
             "on validation: nrPDB is non-redundant, so the held-out chains share few sequence motifs with the few "
             "training chains, unlike the members of a Pfam seed."))


def protein_md(res: dict) -> str:
    """The protein setting's section: the same tables, the verdicts, the choice on validation and the sizes."""
    agg = aggregate(res)
    r, val, geo = readers(agg)
    lines = header(res) + table(res, agg)
    best = best_on_val(agg)
    gain, keep = own_gain(res), measurable(res)
    out = [t for t in tasks_of(res) if t not in keep]
    lines += ["", "Own-LoRA validation gain (mean over seeds): " + ", ".join(
        f"{t} {g:.3f}" for t, g in gain.items()) + f" nats per token. Mean retention (the 'retained, mean' columns "
        f"and every comparison below) is taken over the families whose own LoRA gains more than {MIN_GAIN} (a "
        "threshold of ours, set after the training pilots above showed gains near zero) on "
        "validation: " + ", ".join(keep) + "." + (
            "" if not out else " Left out: " + ", ".join(out) + "; their retention columns divide by a gain that is "
            "noise or negative, and say nothing about the merge.")]
    lines += ["", verdict(res, agg, LEGO)[0]]
    lines += ["", "Choice of a LEGO variant (validation split only): " + ", ".join(
        f"{k} {val(k):.3f}" for k in sorted(variants(agg), key=val, reverse=True)) + f". Best on validation: {best}"
        + (" = the default." if best == LEGO else f", not the default {LEGO} ({val(LEGO):.3f}).")]
    if best != LEGO:
        lines += ["", verdict(res, agg, best)[0]]
    w3, w2, w1 = "linear (mean)", "linear (weights 0.5, diagnostic)", "linear (sum)"
    none, cat = "lego (no reweighting)", "cat (rank 24, the exact sum)"
    mix = _clusters(res, "raw directions")
    tasks = tasks_of(res)
    cross = cross_gain(res)
    lines += ["", "The other families' LoRAs change a family's test NLL by " + ", ".join(
        f"{-cross[t]:+.3f} on {t}" for t in tasks) + " nats per token (the own LoRAs: " + ", ".join(
        f"{-g:+.3f}" for g in own_gain(res, "nll").values()) + "); " + (
            "on every family another family's LoRA is worse than the base, so the updates conflict."
            if all(c < 0 for c in cross.values()) else
            "on " + ", ".join(t for t in tasks if cross[t] < 0) + " another family's LoRA is worse than the base."
            if any(c < 0 for c in cross.values()) else "no family's LoRA makes another worse than the base.")]
    if out:
        lines += ["", "Test NLL change over the base on the families left out of the mean (nats per token, mean "
                  "over seeds; negative = better than the base; the own LoRA: " + ", ".join(
                      f"{t} {-own_gain(res, 'nll')[t]:+.3f}" for t in out) + "):", "",
                  "| merge | " + " | ".join(out) + " |", "|---|" + "---:|" * len(out)]
        for label in (m[0] for m in MERGES if m[0] in agg):
            lines.append(f"| {label} | " + " | ".join(f"{nll_change(res, label, t):+.3f}" for t in out) + " |")
        worse = {k: [t for t in out if nll_change(res, k, t) > 0] for k in (LEGO, best, *RIVALS)}
        lines += ["", "Merges that leave a left-out family worse than the base on test: " + "; ".join(
            f"{k}: {', '.join(v) if v else 'none'}" for k, v in worse.items()) + "."]
    if out:
        pool = {k: agg[k]["pooled"][0] for k in dict.fromkeys((LEGO, best, *RIVALS, *PEFT_FACTOR_MERGES)) if k in agg}
        ahead = {k: sum(x > y for x, y in zip(agg[lg]["per_seed_pooled"], agg[k]["per_seed_pooled"]))
                 for lg in (LEGO,) for k in RIVALS}
        lines += ["", "Pooled over all three families (sum of the merged LoRA's test gains / sum of the own LoRAs' "
                  "test gains, same seed; well defined although some own gains are near zero, and dominated by "
                  "the family with the largest gain): " + ", ".join(f"{k} {x:.3f}" for k, x in pool.items()) +
                  " (validation: " + ", ".join(f"{agg[k]['val_pooled'][0]:.3f}" for k in pool) + "). On this "
                  "measure the default LEGO is " + ("ahead of" if all(pool[LEGO] > pool[k] for k in RIVALS) else
                                                    "not ahead of") + " linear and TIES (ahead in " + ", ".join(
                      f"{ahead[k]} of {len(agg[LEGO]['per_seed_pooled'])} seeds against {k}" for k in RIVALS) + ")."]
    lines += ["", f"Sizes: the rank-{RANK} truncated SVD of the summed update retains {r(w3):.3f} at weight 1/3 "
              f"(norm / M {geo(w3, 'norm_to_mean'):.2f}), {r(w2):.3f} at 1/2 ({geo(w2, 'norm_to_mean'):.2f}) and "
              f"{r(w1):.3f} at 1 ({geo(w1, 'norm_to_mean'):.2f}); the exact sum (cat) retains {r(cat):.3f}. LEGO's "
              f"dual reweighting makes its update {geo(LEGO, 'norm_to_mean'):.2f} times M (cos "
              f"{geo(LEGO, 'cos_to_mean'):.2f} to M; {100 * mix[0]:.0f} % of its clusters mix families) and it retains "
              f"{r(LEGO):.3f}; without reweighting the update is {geo(none, 'norm_to_mean'):.2f} times M (cos "
              f"{geo(none, 'cos_to_mean'):.2f}) and retains {r(none):.3f}; ties (density 0.5) is "
              f"{geo('ties (density 0.5)', 'norm_to_mean'):.2f} times M and retains {r('ties (density 0.5)'):.3f}. "
              "The retention above is measured on " + ", ".join(keep) + " only" + (
                  "; the table of the left-out families shows what each merge costs them." if out else ".")]
    from report_update import update_paragraph

    lines += ["", update_paragraph(res, agg), ""]
    return "\n".join(lines)


def cross_gain(res: dict) -> dict[str, float]:
    """Per task t: the mean test gain over the base of the other tasks' LoRAs on t (mean over seeds)."""
    tasks, base = tasks_of(res), res["base_heldout_nll"]
    return {t: statistics.mean(base[t] - r[f"nll/{t}"] for r in res["rows"] for s in tasks
                               if s != t and r["merge"] == f"single {s}") for t in tasks}


def nll_change(res: dict, label: str, task: str) -> float:
    """Mean over seeds of the test NLL of merge ``label`` on ``task`` minus the base's."""
    return statistics.mean(r[f"nll/{task}"] for r in res["rows"] if r["merge"] == label) - \
        res["base_heldout_nll"][task]


