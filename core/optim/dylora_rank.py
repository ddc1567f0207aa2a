"""DyLoRA's per-step rank sampling (Valipour et al. 2023, arXiv 2210.07558, Sec. 3): a step hook.

``on_step_start`` draws k ~ U{1..r} from its own generator (never the global RNG, so the data order
and dropout of a run do not change when the hook is added) and sets it on every DyLoRA layer of
the adapter. ``after_optimizer_step`` puts every layer back at its resting rank (the config's
``eval_rank``, or r), so whatever runs between steps (``fit``'s evaluation, checkpoints, the saved
or merged adapter) sees that rank and never the one drawn last. The generator state is saved with
checkpoints for exact resume; ``seen`` counts the ranks drawn (tests and benchmarks read it).

``DyLoraConfig.training_hooks`` declares this hook; ``fit`` attaches it.
Not covered: sampling distributions other than uniform (the paper's is uniform); different layers
at different ranks in one step.
"""

from __future__ import annotations

from collections import Counter

import torch

from adaptome.core.adapters.dylora import dylora_layers


class DyLoRARankSampler:
    def __init__(self, adapter_name: str = "default", seed: int = 0):
        self.adapter_name = adapter_name
        self.gen = torch.Generator().manual_seed(seed)
        self.last_rank: int | None = None
        self.seen: Counter = Counter()

    def _layers(self, model):
        layers = dylora_layers(model, self.adapter_name)
        if not layers:
            raise ValueError(f"DyLoRARankSampler: the model has no DyLoRA adapter {self.adapter_name!r}")
        return layers

    def on_step_start(self, state) -> None:
        layers = self._layers(state.model)
        r = layers[0].configs[self.adapter_name].r
        k = int(torch.randint(1, r + 1, (1,), generator=self.gen))
        for layer in layers:
            layer.set_rank(self.adapter_name, k)
        self.last_rank = k
        self.seen[k] += 1

    def after_optimizer_step(self, state) -> None:
        for layer in self._layers(state.model):
            layer.set_rank(self.adapter_name, layer.configs[self.adapter_name].resting_rank)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.gen.set_state(d["gen"])
