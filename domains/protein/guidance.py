"""Classifier-free guidance for conditional protein sampling (Sanchez et al. 2023, "Stay on topic with
Classifier-Free Guidance", arXiv 2306.17806, Eq. 7; after Ho & Salimans 2022 for diffusion models):

    log p_g(w | c, x) = log p(w | x) + g * (log p(w | c, x) - log p(w | x))

with c the condition (the prompt's instruction and label field, ``[Generate by family] Family=<X>``), x the
sequence so far (``Seq=<`` and the residues written), w the next token and g the guidance scale. g = 1 is plain
conditional sampling; g > 1 moves each step further from what the model would write without the label, towards
what the label adds. The unconditional branch is the same model on the sampler's unconditional prompt (``Seq=<``
and the same prefix) followed by the same generated tokens, run beside the conditional batch with its own
key/value cache (about twice the forward cost of plain sampling). The guided log-probabilities then go through the
sampler's temperature and top-k / top-p like the model's own (transformers applies custom logits processors before
its warpers); tokens the sampler suppresses (``residues_only``) stay at -inf.

Why it is offered: on ``benchmarks/protein_generate`` the small models' samples for one family often take another
family's length (``results_small.json``, seed 0: 13 of 24 Cyclin_N samples at 271-385 residues, the 3Beta_HSD /
ArsP_1 lengths, where real Cyclin_N domains are 123-153; 9 of 24 COX2_TM samples at 271-465, real 82-93): the label
reaches the residues only weakly, so a sample drifts into another family's mode. Guidance strengthens exactly that
dependence. Measured there (``results_guidance-validation.md``, then ``results_guidance.md`` on the held-out
sequences; the ``small`` model preset, 24 samples per family, 3 seeds), it does not help these models: on the
validation split the plain ``small`` setting was chosen over scales 1.5, 2 and 3 by the rule fixed before the runs,
and on the held-out sequences guidance passed the length KS test for fewer families (mean KS p 0.125 plain, 0.046 /
0.022 / 0.018 guided), made samples shorter (mean length / real 1.15 plain, 1.01 / 0.82 / 0.64) and richer in low
complexity (pooled share 0.076-0.082 per seed plain, 0.095-0.331 guided, real 0.076), while the share of samples a
3-mer judge assigns to their family stayed where it was (0.30-0.66 per seed plain, 0.26-0.64 guided; chance 0.2).
The unconditional branch is out of the stage-2 model's training distribution (it never saw ``Seq=<`` without an
instruction in stage 2; stage 1 rarely showed an end), so the difference that guidance amplifies is mostly the
instruction's, not the family's. It stays an option, off in both presets. Training that branch too
(``InstructConfig.uncond_share``, conditioning dropout as Ho & Salimans do) did not change the verdict
(``results_cfgtrain.md``: held-out mean KS p 0.022 with guidance 1.5, chosen on validation, vs 0.125 for the plain
preset without dropout; control accuracy 0.20-0.36 per seed).

Not covered: negative prompts (another label as the unconditional branch), guidance of unconditional samples (there
is nothing to guide: the sampler refuses it), scales below 1.

Dimension letters: B prompts per batch, U padded unconditional prompt length, V vocabulary.
"""

from __future__ import annotations

from adaptome.domains.protein.formats import ProteinError

SEQ_OPEN = "Seq=<"


def unconditional_prompt(prompt: str) -> str:
    """The unconditional counterpart of a conditional prompt: its tail from the last ``Seq=<`` (with the prefix),
    i.e. the prompt the sampler uses for unconditional generation with the same prefix."""
    at = prompt.rfind(SEQ_OPEN)
    if at <= 0:
        raise ProteinError(f"guidance needs a conditional prompt that leaves {SEQ_OPEN} open, got {prompt!r}")
    return prompt[at:]


def check_scale(scale: float) -> float:
    if not scale >= 1.0:
        raise ProteinError(f"guidance scale must be >= 1 (1: plain conditional sampling), got {scale}")
    return float(scale)


def _cache_kwarg(model, past) -> dict:
    """The key/value cache argument under the name the model's forward takes (``cache`` in recent transformers,
    ``past_key_values`` before)."""
    import inspect

    names = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in names else "past_key_values": past}


class Guidance:
    """Logits processor: ``scores`` (B, V) of the conditional batch combined with the model's next-token
    log-probabilities on the unconditional prompts plus the same generated tokens, as the module docstring says.

    ``uncond_ids`` / ``uncond_mask`` (B, U): the unconditional prompts, left-padded; ``prompt_len``: the conditional
    batch's padded prompt length (the processor's first call is the first generated token)."""

    def __init__(self, model, uncond_ids, uncond_mask, scale: float, prompt_len: int):
        self.model, self.scale, self.prompt_len = model, check_scale(scale), prompt_len
        self.ids, self.mask = uncond_ids, uncond_mask
        self.past = None
        self.steps = 0

    def _unconditional(self, input_ids):
        import torch

        if input_ids.shape[1] - self.prompt_len != self.steps:
            raise RuntimeError(f"guidance: expected {self.steps} generated tokens, got "
                               f"{input_ids.shape[1] - self.prompt_len}")
        if self.past is None:
            ids = self.ids  # (B, U)
            pos = (self.mask.cumsum(1) - 1).clamp(min=0)  # (B, U): left padding starts each row at 0
        else:
            ids = input_ids[:, -1:]  # (B, 1): the token the conditional branch just generated
            self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)  # (B, U + g)
            pos = self.mask.sum(1, keepdim=True) - 1  # (B, 1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos, use_cache=True,
                         **_cache_kwarg(self.model, self.past))
        self.past = out.get("cache", out.get("past_key_values"))
        self.steps += 1
        return out.logits[:, -1]  # (B, V)

    def __call__(self, input_ids, scores):
        import torch

        u = torch.log_softmax(self._unconditional(input_ids).float(), dim=-1)  # (B, V)
        c = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
        return (u + self.scale * (c - u)).to(scores.dtype)  # (B, V); -inf where c is -inf (scale >= 1)
