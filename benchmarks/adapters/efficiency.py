"""Efficiency of every adapter method against peft LoRA r=8 on one tiny LLaMA and one tiny BERT.

Per method: trainable parameters, adapter checkpoint bytes (``io.save_adapter``; full fine-tuning:
the whole model's safetensors), median step time (forward + backward + AdamW, after warm-up) and a
memory figure. Memory on CPU is the *training-state* bytes: tensors saved for backward (counted by
``torch.autograd.graph.saved_tensors_hooks``, deduplicated by storage, parameters excluded) +
gradients + optimizer state + method caches (NOLA's bases); transient temporaries are not seen. On
CUDA it is the true peak (``torch.cuda.max_memory_allocated`` minus the memory before the step).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from adaptome.core.adapters import api, io

R = 8
#: (row label, registry name, options); every LoRA-family method at rank 8 on all linear layers
METHODS = [
    ("peft lora r=8 (reference)", "lora", {"r": R, "lora_alpha": 16}),
    ("lora_native", "lora_native", {"r": R, "lora_alpha": 16}),
    ("dylora", "dylora", {"r": R, "lora_alpha": 16}),
    ("sora", "sora", {"r": R, "lora_alpha": 16}),
    ("nola (cached bases)", "nola", {"r": R, "num_basis_a": 64, "num_basis_b": 64}),
    ("nola (regenerated)", "nola", {"r": R, "num_basis_a": 64, "num_basis_b": 64, "cache_basis": False}),
    ("loraxs", "loraxs", {"r": R}),
    ("lorasb", "lorasb", {"r": R}),
    ("lamda", "lamda", {"r": R, "lora_alpha": 16}),
    ("allora", "allora", {"r": R}),
    ("seq_bn", "seq_bn", {"reduction_factor": 16}),
    ("seq_bn_inv", "seq_bn_inv", {"reduction_factor": 16}),
    ("full fine-tuning", None, {}),
]


def build(arch: str, hidden: int = 256, layers: int = 2, vocab: int = 512) -> nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                            tie_word_embeddings=False))
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=256))


def _ckpt_bytes(model: nn.Module, method: str | None) -> int:
    with tempfile.TemporaryDirectory() as d:
        if method is None:
            from safetensors.torch import save_model

            save_model(model, f"{d}/model.safetensors")  # tied weights stored once
            return Path(f"{d}/model.safetensors").stat().st_size
        path = io.save_adapter(model, Path(d) / "a")
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")


def _cache_bytes(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        for _, tensors in getattr(m, "_basis", {}).values():
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _state_bytes(model, opt, step) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(model).backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    opt.step()
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0)
    return sum(saved.values()) + grads + state + _cache_bytes(model)


def measure(arch: str, batch: int = 8, seq: int = 128, steps: int = 12, warmup: int = 3,
            device: str = "cpu", methods=METHODS) -> list[dict]:
    base = build(arch)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (batch, seq), generator=g).to(device)

    def step(model):
        return model(input_ids=ids, labels=ids).loss

    setups = []
    for label, method, opts in methods:
        model = copy.deepcopy(base).to(device)
        if method is not None:
            model = api.apply_adapter(model, api.make_config(method, opts))
            if method == "lorasb":
                from adaptome.core.adapters.lorasb import init_lorasb

                init_lorasb(model, [{"input_ids": ids, "labels": ids}], step_size=1e-3)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        setups.append((label, method, model, opt))

    def timed_step(model, opt) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        step(model).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # round-robin: every round times one step of every method, so load on a shared machine hits all alike
    times: dict[str, list[float]] = {label: [] for label, *_ in setups}
    for i in range(warmup + steps):
        for label, _, model, opt in setups:
            t = timed_step(model, opt)
            if i >= warmup:
                times[label].append(t)
    rows = []
    for label, method, model, opt in setups:
        if device == "cuda":
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step(model).backward()
            opt.step()
            torch.cuda.synchronize()
            mem = torch.cuda.max_memory_allocated() - before
        else:
            mem = _state_bytes(model, opt, step)
        rows.append({"arch": arch, "method": label, "name": method or "full",
                     "trainable": int(api.trainable_report(model)["trainable"]),
                     "checkpoint_bytes": _ckpt_bytes(model.cpu(), method),
                     "step_s": statistics.median(times[label]), "memory_bytes": int(mem)})
    del setups
    ref = rows[0]
    for r in rows:
        r["step_ratio"] = r["step_s"] / ref["step_s"]
        r["memory_ratio"] = r["memory_bytes"] / ref["memory_bytes"]
    return rows


def sora_pruned_vs_lora(arch: str = "llama") -> dict:
    """SoRA with half of its gates zeroed, pruned to plain peft LoRA, vs a peft LoRA of rank r/2."""
    from adaptome.core.adapters.sora import gate_parameters, prune

    base = build(arch)
    model = api.apply_adapter(copy.deepcopy(base), api.make_config("sora", {"r": R}))
    with torch.no_grad():
        for g in gate_parameters(model):
            g[R // 2:] = 0
    pruned = prune(model)
    lora = api.apply_adapter(copy.deepcopy(base), api.make_config("lora", {"r": R // 2}))
    with tempfile.TemporaryDirectory() as d:
        pruned.save_pretrained(f"{d}/p")
        lora.save_pretrained(f"{d}/l")
        sizes = {k: Path(f"{d}/{k}/adapter_model.safetensors").stat().st_size for k in ("p", "l")}
    return {"arch": arch, "surviving_rank": R // 2, "pruned_sora_bytes": sizes["p"], "lora_same_rank_bytes": sizes["l"]}
