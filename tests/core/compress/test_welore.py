"""WeLore: the global threshold is solved from the budget (met to within one rank per matrix), t = 0
changes nothing, LRC factors reproduce the rank-k SVD, and LRC-only fine-tuning through ``fit``
trains exactly the LRC factors."""

from __future__ import annotations

import copy

import pytest
import torch

from adaptome.core.adapters.targets import resolve_targets
from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.layers import CompressError, LowRankLinear, freeze_all_but
from adaptome.core.compress.welore import WeLoreConfig, normalised_spectrum, solve_threshold, total_params

WELORE = COMPRESSORS.get("welore")


def _spectra(model, targets):
    ws = [model.get_submodule(p).weight.detach() for p in targets]
    return [normalised_spectrum(torch.linalg.svdvals(w)) for w in ws], [tuple(w.shape) for w in ws]


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7])
def test_budget_met_within_one_rank_per_matrix(llama, keep):
    targets = resolve_targets(llama, "all-linear")
    spectra, shapes = _spectra(llama, targets)
    dense = sum(o * i for o, i in shapes)
    rows = WELORE.compress(llama, targets, WeLoreConfig(keep_fraction=keep))
    stored = sum(r["params_after"] for r in rows)
    assert stored <= keep * dense
    # one more rank in every matrix would cost at most sum(o + i): the solution is that close
    assert keep * dense - stored <= sum(o + i for o, i in shapes)
    # and the solved threshold is the smallest: keeping one more singular value breaks the budget
    t = solve_threshold(spectra, shapes, keep, 0.4999)
    assert total_params(spectra, shapes, t, 0.4999) <= keep * dense
    below = max(float(v) for s in spectra for v in s if float(v) < t)
    assert total_params(spectra, shapes, below, 0.4999) > keep * dense
    # the report matches the model: LRC matrices became LowRankLinear of the reported rank
    for r in rows:
        mod = llama.get_submodule(r["path"])
        assert isinstance(mod, LowRankLinear) == r["lrc"]
        if r["lrc"]:
            assert mod.rank == r["rank"] and r["params_after"] == r["rank"] * sum(r["shape"])


def test_lrc_factors_are_the_rank_k_svd(llama):
    targets = ["model.layers.0.mlp.down_proj"]
    w = llama.get_submodule(targets[0]).weight.detach().clone()
    rows = WELORE.compress(llama, targets, WeLoreConfig(threshold=0.6, min_ratio=0.0))
    k = rows[0]["rank"]
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    ref = u[:, :k] @ torch.diag(s[:k]) @ vh[:k]  # (o, k) (k, k) (k, i)
    layer = llama.get_submodule(targets[0])
    assert isinstance(layer, LowRankLinear) and 0 < k < min(w.shape)
    assert torch.allclose(layer.weight_product(), ref, atol=1e-5)
    s_hat = (s - s.min()) / (s.max() - s.min())
    assert k == int((s_hat >= 0.6).sum())


def test_threshold_zero_changes_nothing(llama, batch):
    before = copy.deepcopy(llama.state_dict())
    x = batch
    ref = llama(x).logits
    rows = WELORE.compress(llama, resolve_targets(llama, "all-linear"), WeLoreConfig(threshold=0.0))
    assert all(r["rank"] == r["full_rank"] and not r["lrc"] for r in rows)
    after = llama.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(llama(x).logits, ref)


def test_impossible_budget_names_the_option(llama):
    with pytest.raises(CompressError, match="--budget"):
        WELORE.compress(llama, resolve_targets(llama, "all-linear"), WeLoreConfig(keep_fraction=0.01))


def test_solver_on_a_hand_made_spectrum():
    # two 4x4 matrices; σ̂ of A = [1, .5, .2, 0], of B = [1, .9, .1, 0]; keep 0.5 of 32 = 16 values:
    # a rank-k LRC of a 4x4 costs 8k, so the only fit is rank 1 in both (t just above 0.5 and 0.9)
    spectra = [torch.tensor([1.0, 0.5, 0.2, 0.0], dtype=torch.float64),
               torch.tensor([1.0, 0.9, 0.1, 0.0], dtype=torch.float64)]
    t = solve_threshold(spectra, [(4, 4), (4, 4)], 0.5, 0.4999)
    assert 0.9 < t < 0.9 + 1e-6
    assert total_params(spectra, [(4, 4), (4, 4)], t, 0.4999) == 16


def test_lrc_only_finetuning_trains_exactly_the_lrc_factors(llama, tmp_path, token_data):
    from adaptome.core.train.loop import fit

    rows = WELORE.compress(llama, resolve_targets(llama, "all-linear"), WeLoreConfig(keep_fraction=0.8))
    lrc = {r["path"] for r in rows if r["lrc"]}
    assert lrc and len(lrc) < len(rows)  # both kinds present: N-LRCs must stay frozen
    keep = WELORE.mark_trainable(llama)
    names = {n for n, p in llama.named_parameters() if any(p is q for q in keep)}
    assert names == {f"{p}.{f}.weight" for p in lrc for f in ("first", "second")}
    freeze_all_but(llama, keep)
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    fit(llama, token_data, output_dir=tmp_path / "ft", max_steps=3, batch_size=4, lr=1e-2, progress=False,
        log_every=0)
    changed = {n for n, p in llama.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == names
