"""DyLoRA's per-step rank sampling (Valipour et al. 2023, arXiv 2210.07558, Sec. 3): a step hook.

``on_step_start`` draws k ~ U{1..r} from its own generator (never the global RNG, so the data order
and dropout of a run do not change when the hook is added) and sets it on every DyLoRA layer of
the adapter. ``on_train_end``-style restoring is explicit: call ``set_rank(model, r)`` (or any k)
after training. The generator state is saved with checkpoints for exact resume.

Not covered: sampling distributions other than uniform (the paper's is uniform); different layers
at different ranks in one step.
"""

from __future__ import annotations

import torch

from adaptome.core.adapters.dylora import dylora_layers


class DyLoRARankSampler:
    def __init__(self, adapter_name: str = "default", seed: int = 0):
        self.adapter_name = adapter_name
        self.gen = torch.Generator().manual_seed(seed)
        self.last_rank: int | None = None

    def on_step_start(self, state) -> None:
        layers = dylora_layers(state.model, self.adapter_name)
        if not layers:
            raise ValueError(f"DyLoRARankSampler: the model has no DyLoRA adapter {self.adapter_name!r}")
        r = layers[0].configs[self.adapter_name].r
        k = int(torch.randint(1, r + 1, (1,), generator=self.gen))
        for layer in layers:
            layer.set_rank(self.adapter_name, k)
        self.last_rank = k

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.gen.set_state(d["gen"])
