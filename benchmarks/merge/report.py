"""results.md of the merge benchmark, every sentence computed from results.json.

Usage: python benchmarks/merge/report.py  (rewrites results.md from results.json)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
TASKS = ["hau", "swa", "yor"]
NAMES = {"hau": "Hausa", "swa": "Swahili", "yor": "Yoruba"}
RANK = 8
#: (label, method, rank, options)
MERGES = [
    ("lego (dual reweighting)", "lego", RANK, {}),
    ("lego (dual reweighting, max norm)", "lego", RANK, {"param_norm": "max"}),
    ("lego (no reweighting)", "lego", RANK, {"param_reweight": False, "output_reweight": False}),
    ("lego on raw units (dual reweighting)", "lego", RANK, {"cluster_on": "units"}),
    ("lego on raw units (dual reweighting, max norm)", "lego", RANK, {"cluster_on": "units", "param_norm": "max"}),
    ("lego on raw units (no reweighting)", "lego", RANK, {"cluster_on": "units", "param_reweight": False,
                                                          "output_reweight": False}),
    ("lego svd units (dual reweighting)", "lego", RANK, {"basis": "svd"}),
    ("lego svd units on raw units (dual reweighting)", "lego", RANK, {"basis": "svd", "cluster_on": "units"}),
    ("linear (sum)", "linear", RANK, {}),
    ("linear (mean)", "linear", RANK, {"weights": [1 / 3] * 3}),
    ("linear (weights 0.5, diagnostic)", "linear", RANK, {"weights": [0.5] * 3}),
    ("ties (density 0.5)", "ties", RANK, {"density": 0.5}),
    ("dare (density 0.5)", "dare", RANK, {"density": 0.5}),
    ("lego (rank 24, dual reweighting)", "lego", 3 * RANK, {}),
    ("cat (rank 24, the exact sum)", "cat", None, {}),
]
LEGO = "lego (dual reweighting)"
RIVALS = ("linear (sum)", "linear (mean)", "ties (density 0.5)")


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def specific(res: dict, row: dict) -> float:
    """Language-specific share kept, mean over tasks: (F_t - NLL_merged) / (F_t - NLL_own), F_t the mean
    held-out NLL on t of the two other languages' LoRAs (same seed): 1 = as good as t's own LoRA,
    0 = no better than a LoRA of another language."""
    single = {r["merge"].removeprefix("single "): r for r in res["rows"]
              if r["seed"] == row["seed"] and r["merge"].startswith("single ")}
    out = []
    for t in TASKS:
        foreign = statistics.mean(single[s][f"nll/{t}"] for s in TASKS if s != t)
        out.append((foreign - row[f"nll/{t}"]) / (foreign - single[t][f"nll/{t}"]))
    return statistics.mean(out)


GEOMETRY = ["distance_to_sum", "norm_to_mean", "cos_to_mean", "along_own"]
LEGO_VARIANTS = [m[0] for m in MERGES if m[1] == "lego" and m[2] == RANK]


def aggregate(res: dict) -> dict:
    agg = {}
    for label, *_ in MERGES:
        rs = [dict(r, specific=specific(res, r)) for r in res["rows"] if r["merge"] == label]
        keys = [f"retained/{t}" for t in TASKS] + ["retained_mean", "val_retained_mean", "specific", *GEOMETRY]
        agg[label] = {k: _ms([r[k] for r in rs]) for k in keys}
        agg[label]["per_seed"] = [r["retained_mean"] for r in sorted(rs, key=lambda r: r["seed"])]
    return agg


def _clusters(res: dict, kind: str) -> tuple[float, float, float]:
    """(share of clusters mixing languages, share of units in them, centroid norm / members' mean norm) for
    ``kind`` = "<basis> <cluster_on>", mean over seeds."""
    rows = [r for r in res["rows"] if r["merge"] == f"lego clusters {kind}"]
    return tuple(statistics.mean(r[k] for r in rows)
                 for k in ("mixed_cluster_share", "units_in_mixed_clusters", "centroid_norm_ratio"))


def header(res: dict) -> list[str]:
    v, a = res["versions"], res["args"]
    base = res["base_heldout_nll"]
    single = {t: {u: statistics.mean(r[f"nll/{u}"] for r in res["rows"] if r["merge"] == f"single {t}")
                  for u in TASKS} for t in TASKS}
    cached = res.get("cached", {})
    n_cached = sum(bool(x) for x in cached.values())
    lines = ["## Merging three task LoRAs (three languages, held-out retention)", "",
             f"Command: `{res['command']}` (cpu, torch {v['torch']}, peft {v['peft']}, transformers "
             f"{v['transformers']}, scikit-learn {v['scikit-learn']}, commit {res['commit'][:10]}, "
             f"{res['seconds']:.0f} s wall, {res['cpu_seconds']:.0f} s CPU). Trained models read from the on-disk "
             f"cache (benchmarks/merge/cache.py: keyed by a hash of every training setting, the training data's "
             f"token ids, the package versions and the training code): {n_cached} of {len(cached)} (the base and "
             f"{len(cached) - 1} task LoRAs)" + ("; none was trained in this run" if n_cached == len(cached) else
                                                 "; the rest were trained in this run") + ".", "",
             "Tiny LLaMA (hidden 64, 2 layers, character tokens, blocks of 128) trained fully for "
             f"{a['base_steps']} steps on core's English example text ({res['generic_blocks']} blocks): the base. "
             f"Three peft LoRAs (rank {RANK}, alpha {2 * RANK}, attention + MLP) trained from it for {a['steps']} "
             "steps (batch 16) on Hausa, Swahili and Yoruba news text (MasakhaNER 2.0 sentences, "
             "domains/multilingual/data/text). Per language the last 200 lines are the test split, the 200 before "
             "them the validation split (the only split any choice below is made on), the rest training data "
             "(training blocks " + ", ".join(f"{NAMES[t]} {res['blocks'][t]['train']}" for t in TASKS) +
             "; validation " + ", ".join(f"{NAMES[t]} {res['blocks'][t]['val']}" for t in TASKS) + "; test " +
             ", ".join(f"{NAMES[t]} {res['blocks'][t]['held_out']}" for t in TASKS) + "; share of characters "
             "outside the ASCII tokenizer " + ", ".join(f"{NAMES[t]} {100 * res['unk_share'][t]:.1f} %"
                                                         for t in TASKS) + ").", "",
             "Test NLL (nats per token, mean over seeds) of the base and of each single LoRA on each language; "
             "the diagonal is what each task LoRA learned:", "",
             "| model | " + " | ".join(NAMES[t] for t in TASKS) + " |", "|---|" + "---:|" * len(TASKS),
             "| base | " + " | ".join(f"{base[t]:.3f}" for t in TASKS) + " |"]
    for t in TASKS:
        lines.append(f"| {NAMES[t]} LoRA | " + " | ".join(f"{single[t][u]:.3f}" for u in TASKS) + " |")
    gains = {t: base[t] - single[t][t] for t in TASKS}
    cross = {t: statistics.mean(base[t] - single[s][t] for s in TASKS if s != t) for t in TASKS}
    lines += ["", "Test gain of each task's own LoRA over the base: " +
              ", ".join(f"{NAMES[t]} {gains[t]:.3f}" for t in TASKS) + " nats per token; mean gain of the two "
              "other languages' LoRAs on that language: " + ", ".join(f"{NAMES[t]} {cross[t]:.3f}" for t in TASKS) +
              "."]
    return lines


def table(res: dict, agg: dict) -> list[str]:
    a = res["args"]
    lines = ["", f"Merged at rank {RANK} (the rank of one input) unless the label says otherwise. Retained = (NLL gain "
             "of the merged LoRA over the base on a language) / (gain of that language's own LoRA), on the test split "
             f"unless marked 'val'; mean +- std over {a['seeds']} seeds. 'language-specific kept' is (F_t - "
             "NLL_merged) / (F_t - NLL_own LoRA), F_t the mean test NLL on language t of the other two languages' "
             "LoRAs, averaged over the languages (1 = as good as the language's own LoRA, 0 = no better than a LoRA "
             "of another language). Geometry of the merged update G over all modules (Frobenius; D_t the inputs' "
             "updates, M their mean): 'dist. to sum' = ||G - sum_t D_t|| / ||sum_t D_t|| (weighted sum where the "
             "merge has weights), 'norm / M' = ||G|| / ||M||, 'cos to M', and 'own share' = mean_t <G, D_t> / "
             "||D_t||^2 (about 1 for the sum, 1/3 for the mean, if the updates were orthogonal).", "",
             "| merge | " + " | ".join(f"retained {NAMES[t]}" for t in TASKS) +
             " | retained, mean | retained, mean (val) | language-specific kept | dist. to sum | norm / M | cos to M "
             "| own share |", "|---|" + "---:|" * (len(TASKS) + 7)]
    for label, *_ in MERGES:
        g = agg[label]
        cells = [f"{g[f'retained/{t}'][0]:.2f} +- {g[f'retained/{t}'][1]:.2f}" for t in TASKS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {g['retained_mean'][0]:.3f} +- "
                     f"{g['retained_mean'][1]:.3f} | {g['val_retained_mean'][0]:.3f} | {g['specific'][0]:.2f} +- "
                     f"{g['specific'][1]:.2f} | " + " | ".join(f"{g[k][0]:.2f}" for k in GEOMETRY) + " |")
    return lines


def write_md(res: dict) -> str:
    agg = aggregate(res)
    a = res["args"]
    r = lambda k: agg[k]["retained_mean"][0]  # noqa: E731
    val = lambda k: agg[k]["val_retained_mean"][0]  # noqa: E731
    geo = lambda k, m: agg[k][m][0]  # noqa: E731
    lines = header(res) + table(res, agg)
    lego = r(LEGO)
    others = {k: r(k) for k in RIVALS}
    beaten = [k for k, x in others.items() if lego > x]
    not_beaten = [k for k, x in others.items() if lego <= x]
    per_seed = {k: sum(x > y for x, y in zip(agg[LEGO]["per_seed"], agg[k]["per_seed"])) for k in RIVALS}
    verdict = ("LoRA-LEGO (the default: k-means on directions, dual reweighting) retains more on average than "
               + ", ".join(beaten) if beaten else
               "LoRA-LEGO (the default) does not retain more than any of linear and TIES")
    if beaten and not_beaten:
        verdict += ", but not more than " + ", ".join(not_beaten)
    lines += ["", f"At rank {RANK}: {verdict} ({lego:.3f} vs " + ", ".join(f"{k} {x:.3f}" for k, x in others.items())
              + "; LEGO ahead in " + ", ".join(f"{per_seed[k]} of {a['seeds']} seeds against {k}" for k in RIVALS) +
              "). The target (LEGO above linear and TIES at the rank of one input) is "
              f"{'met' if not not_beaten else 'not met'} in this run."]
    best = max(LEGO_VARIANTS, key=val)
    lines += ["", "Choice of the default (validation split only): " + ", ".join(
        f"{k} {val(k):.3f}" for k in sorted(LEGO_VARIANTS, key=val, reverse=True)) + f". Best on validation: {best}"
        + (" = the default." if best == LEGO else f"; the default is {LEGO} ({val(LEGO):.3f}).")]
    mix = {(basis, on): _clusters(res, f"{basis} {on}") for basis in ("raw", "svd") for on in ("directions", "units")}
    raw_u, svd_d, svd_u = "lego on raw units (dual reweighting)", "lego svd units (dual reweighting)", \
        "lego svd units on raw units (dual reweighting)"
    lines += ["", f"Raw units vs directions: k-means on the raw units (the other reading of the paper; the default "
              f"before this run) retains {r(raw_u):.3f} (validation {val(raw_u):.3f}), on directions {lego:.3f} "
              f"(validation {val(LEGO):.3f}); with the largest-magnitude norm (on directions: the whole recipe of the "
              f"re-implementation we read) {r('lego (dual reweighting, max norm)'):.3f}. Clusters mixing languages: "
              f"{100 * mix['raw', 'directions'][0]:.0f} % on directions, {100 * mix['raw', 'units'][0]:.0f} % on raw "
              "units."]
    lines += ["", "SVD units (the identifiability hypothesis): re-factoring each LoRA by its SVD before clustering "
              f"changes the share of clusters that mix languages from {100 * mix['raw', 'directions'][0]:.0f} % to "
              f"{100 * mix['svd', 'directions'][0]:.0f} % on directions and from {100 * mix['raw', 'units'][0]:.0f} % "
              f"to {100 * mix['svd', 'units'][0]:.0f} % on raw units; retention goes from {lego:.3f} to {r(svd_d):.3f} "
              f"on directions (validation {val(LEGO):.3f} -> {val(svd_d):.3f}) and from {r(raw_u):.3f} to "
              f"{r(svd_u):.3f} on raw units (validation {val(raw_u):.3f} -> {val(svd_u):.3f}). On raw units the SVD "
              "units are ordered by size: k-means gives the largest ones a cluster each and pools the small ones "
              f"(centroid norm / members' mean norm in multi-member clusters {mix['svd', 'units'][2]:.2f}, against "
              f"{mix['raw', 'units'][2]:.2f} for trained units), so the merge keeps each language's top directions at "
              f"full size: its update is {geo(svd_u, 'norm_to_mean'):.2f} times the mean update's norm and carries "
              f"{geo(svd_u, 'along_own'):.2f} of each task's own update (trained units: "
              f"{geo(raw_u, 'norm_to_mean'):.2f}, {geo(raw_u, 'along_own'):.2f}), i.e. it moves towards the plain sum, "
              f"which retains {r('linear (sum)'):.3f}. On directions the SVD merge's update is "
              f"{geo(svd_d, 'norm_to_mean'):.2f} times M at cos {geo(svd_d, 'cos_to_mean'):.2f} (trained units: "
              f"{geo(LEGO, 'norm_to_mean'):.2f}, {geo(LEGO, 'cos_to_mean'):.2f}). "
              + ("The SVD basis retains more than the trained units on validation in both clusterings, "
                 if val(svd_d) > val(LEGO) and val(svd_u) > val(raw_u) else
                 "The SVD basis does not retain more than the trained units on validation in both clusterings, so "
                 "non-identifiable units are not what costs LEGO here; ") +
              "it stays an option (basis='svd')" + (" and is not the default." if best != svd_d else ".")]
    w3, w2, w1 = "linear (mean)", "linear (weights 0.5, diagnostic)", "linear (sum)"
    lin = min((w3, w2, w1), key=lambda k: abs(geo(k, "norm_to_mean") - geo(LEGO, "norm_to_mean")))
    lines += ["", "Why LEGO loses, in numbers. Retention depends strongly on the size of the merged update: the same "
              f"rank-{RANK} truncated SVD of the summed update retains {r(w3):.3f} at weight 1/3 (norm / M "
              f"{geo(w3, 'norm_to_mean'):.2f}), {r(w2):.3f} at 1/2 ({geo(w2, 'norm_to_mean'):.2f}) and {r(w1):.3f} at "
              f"1 ({geo(w1, 'norm_to_mean'):.2f}), always at cos {geo(w3, 'cos_to_mean'):.2f} to the mean update. "
              f"LEGO's update is {geo(LEGO, 'norm_to_mean'):.2f} times M in size, nearest to {lin} "
              f"({geo(lin, 'norm_to_mean'):.2f}, retaining {r(lin):.3f}), but points less along the mean update (cos "
              f"{geo(LEGO, 'cos_to_mean'):.2f} against {geo(w3, 'cos_to_mean'):.2f}): at k = {RANK}, "
              f"{100 * mix['raw', 'directions'][0]:.0f} % of its clusters mix languages, and a mixed cluster's "
              "rank-1 update (mean of the B halves) x (mean of the A halves) adds cross terms B_i A_j between "
              f"languages that none of the inputs has. The truncated SVD is the best rank-{RANK} approximation "
              "of the (scaled) summed update "
              "(Eckart-Young), so a rank-k merge of about the same size that stays further from that update "
              f"retains less: LEGO {lego:.3f} against {r(lin):.3f}. Without any reweighting LEGO's update is "
              f"{geo('lego (no reweighting)', 'norm_to_mean'):.2f} times M at cos "
              f"{geo('lego (no reweighting)', 'cos_to_mean'):.2f} and retains {r('lego (no reweighting)'):.3f}; at "
              f"rank {3 * RANK} (every unit its own cluster: sqrt({RANK}/{3 * RANK}) times the exact sum, cos "
              f"{geo('lego (rank 24, dual reweighting)', 'cos_to_mean'):.2f}) it retains "
              f"{r('lego (rank 24, dual reweighting)'):.3f}, against {r('cat (rank 24, the exact sum)'):.3f} for the "
              "exact sum (cat). The dual reweighting formulas are our reading of the paper's description (see "
              "core/merge/lego.py), not verified against its text; no official code was available.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    (HERE / "results.md").write_text(write_md(json.loads((HERE / "results.json").read_text())))
