"""Run by tests/core/test_train_distributed.py under torchrun (and once in a single process).

Trains a native LoRA on a tiny LLaMA with the core loop, with default settings (no ``cpu=True``:
the loop must find the launcher's process group by itself), and writes the trainable weights of
every rank to ``<out>/rank<R>.safetensors`` and ``<out>/world<W>`` (the world size it saw).
With ``stall``, rank 1 stops itself (SIGSTOP) after step 3 under a 3 s collective timeout.
Usage: python ddp_worker.py OUT_DIR PER_PROCESS_BATCH [stall]
"""

import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.train.loop import fit, make_accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared tiny models
import tiny_models as tiny  # noqa: E402


class _StopRank1After3:
    def __init__(self, out: Path):
        self.out = out

    def after_optimizer_step(self, state):
        if state.step == 3 and state.accelerator.process_index == 1:
            (self.out / "stalled.pid").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    stall = len(sys.argv) > 3 and sys.argv[3] == "stall"
    model = apply_adapter(tiny.llama(eval_mode=False),
                          make_config("lora_native", {"r": 4, "init_lora_weights": "random_b"}))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 32, (32, 10), generator=g)]

    def collate(b):
        return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)

    acc = make_accelerator("no", timeout_s=3 if stall else 600)
    (out / f"world{acc.num_processes}").write_text("")
    if acc.is_main_process:
        save_file({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                  str(out / "init.safetensors"))
    res = fit(model, data, collate_fn=collate, accelerator=acc, output_dir=out / "run", max_steps=6,
              batch_size=batch, lr=5e-3, progress=False, log_every=0, resume=False, max_grad_norm=None,
              save_every=2, dist_timeout_s=3 if stall else 600, hooks=[_StopRank1After3(out)] if stall else [])
    weights = {n: p.detach().contiguous() for n, p in res.model.named_parameters() if p.requires_grad}
    save_file(weights, str(out / f"rank{acc.process_index}.safetensors"))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
