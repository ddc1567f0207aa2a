"""The paragraph of results.md on LEGO's update-space options (``centroid="update"``, ``cluster_on="updates"``
in core/merge/lego.py; ours, not the paper's), for either setting, every number computed from its results file."""

from __future__ import annotations

import statistics

from report import LEGO, RIVALS, _clusters, best_on_val, readers, variants, word

UPD = "lego update centroid (dual reweighting)"
UPD_NONE = "lego update centroid (no reweighting)"
UPD_RAW = "lego update centroid on raw units (dual reweighting)"
UPD_FREE = "lego update centroid, sign-free clusters (dual reweighting)"
#: the LEGO variants with our update-space centroid; the others use the paper's centroid (mean of the factors)
OURS = (UPD, UPD_NONE, UPD_RAW, UPD_FREE)
PAPER_PAIRS = {UPD: LEGO, UPD_NONE: "lego (no reweighting)", UPD_RAW: "lego on raw units (dual reweighting)"}
#: how the paragraph names each pair's shared clustering and reweighting
SETUP = {UPD: "k-means on directions, dual reweighting", UPD_NONE: "k-means on directions, no reweighting",
         UPD_RAW: "k-means on raw units, dual reweighting"}


def update_paragraph(res: dict, agg: dict) -> str:
    """Each update-centroid variant beside the same clustering with the paper's centroid (test, validation,
    geometry), the sign-free clustering's mixing of tasks, and which variant validation prefers."""
    if UPD not in agg:
        return ""
    r, val, geo = readers(agg)
    _, ws = word(res)
    pairs = "; ".join(f"{SETUP[ours]}: {r(ours):.3f} (validation {val(ours):.3f}) against {r(paper):.3f} "
                      f"({val(paper):.3f}) with the paper's centroid" for ours, paper in pairs_in(agg))
    rival = max(RIVALS, key=r)
    gap_paper, gap_ours = r(rival) - r(LEGO), r(rival) - r(UPD)
    gap = (f"Against the strongest baseline on test, {rival} ({r(rival):.3f}), the gap (baseline minus LEGO) is "
           f"{gap_ours:+.3f} with the update-space centroid and {gap_paper:+.3f} with the paper's (both on "
           "directions, dual reweighting): "
           "removing the cross terms " + ("closes it." if gap_ours <= 0 else "narrows it but does not close it."
                                          if gap_ours < gap_paper else "does not narrow it."))
    mix_dir, mix_free = _clusters(res, "raw directions")[0], _clusters(res, "raw updates")[0]
    turn = [row for row in res["rows"]
            if row["merge"] == "lego clusters raw directions" and "centroid_update_cos" in row]
    cos_all = statistics.mean(row["centroid_update_cos"] for row in turn) if turn else None
    cos_mixed = statistics.mean(row["centroid_update_cos_mixed"] for row in turn) if turn else None
    keys = ("rank_one_share", "rank_one_cos")
    kept = {k: statistics.mean(row[k] for row in turn) for k in keys} if turn and all(k in turn[0] for k in keys) \
        else {}
    why = "" if cos_all is None else (
        " In the default clustering, for clusters of several units, the paper's centroid's update (mean of the B "
        f"halves) x (mean of the A halves) is at cos {cos_all:.3f} to the members' mean update ({cos_mixed:.3f} in "
        f"clusters mixing {ws}; 1 = the cross terms do not turn it)" + ("." if not kept else
                                                                      f", and the best rank-1 approximation of that "
                                                                      f"mean update, the update-space centroid, at "
                                                                      f"cos {kept['rank_one_cos']:.3f} (it keeps "
                                                                      f"{kept['rank_one_share']:.3f} of its squared "
                                                                      "norm; the rest no single rank can hold): the "
                                                                      "cross terms cost "
                                                                      f"{kept['rank_one_cos'] - cos_all:.3f} in "
                                                                      "cosine beyond what one rank per cluster "
                                                                      "must lose."))
    ours_best = max((k for k in OURS if k in agg), key=val)
    paper_best = max((k for k in variants(agg) if k not in OURS), key=val)
    best = best_on_val(agg)
    closer = geo(UPD, "cos_to_mean") > geo(LEGO, "cos_to_mean")
    return ("Update-space centroid (centroid='update', our option, not the paper's method: a cluster's rank is "
            "the top singular pair of its members' mean update instead of (mean of the B halves) x (mean of the A "
            "halves), so it has no cross terms B_i A_j; same clusters, same dual reweighting with the norm taken "
            "in update space; core/merge/lego.py). Test retention per clustering and reweighting, the update-space "
            f"centroid against the paper's: {pairs}.{why} With the default clustering its update "
            f"is {geo(UPD, 'norm_to_mean'):.2f} times M at cos {geo(UPD, 'cos_to_mean'):.2f} to M (the paper's "
            f"centroid: {geo(LEGO, 'norm_to_mean'):.2f}, cos {geo(LEGO, 'cos_to_mean'):.2f}), i.e. "
            + ("closer to" if closer else "not closer to") + " the direction of the mean update (by "
            f"{geo(UPD, 'cos_to_mean') - geo(LEGO, 'cos_to_mean'):+.3f} in cosine). {gap} Clustering the "
            f"normalised rank-1 updates instead (sign-free, cluster_on='updates'; {100 * mix_free:.0f} % of its "
            f"clusters mix {ws}, against {100 * mix_dir:.0f} % on directions) retains {r(UPD_FREE):.3f} (validation "
            f"{val(UPD_FREE):.3f}). On validation the best update-space variant is {ours_best} ({val(ours_best):.3f})"
            f" and the best with the paper's centroid is {paper_best} ({val(paper_best):.3f}); the LEGO variant "
            f"chosen on validation over all of them is {best}" + (
                ", one of our update-space options; the default stays the paper's centroid (--method lego is the "
                "paper's method), and both are reported on test above." if best in OURS else
                ", so the update-space centroid is not chosen; it stays an option (--centroid update)."))


def pairs_in(agg: dict) -> list[tuple[str, str]]:
    """(update-centroid variant, the same clustering and reweighting with the paper's centroid) present in ``agg``."""
    return [(o, p) for o, p in PAPER_PAIRS.items() if o in agg and p in agg]
