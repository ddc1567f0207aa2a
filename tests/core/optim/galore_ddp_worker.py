"""Run by tests/core/optim/test_galore_ddp.py under torchrun (and in one process).

Pretrains a tiny LLaMA with the ``galore`` optimizer through ``fit`` and writes every rank's weights to
``<out>/rank<R>.safetensors``. Usage: python galore_ddp_worker.py OUT PER_PROCESS_BATCH GRAD_ACCUM LAYERWISE(0/1)
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from adaptome.core.optim.registry import make_optimizer_factory
from adaptome.core.train.loop import fit, make_accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: the shared tiny models
import tiny_models as tiny  # noqa: E402


def main() -> None:
    out, batch, accum, layerwise = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    model = tiny.llama(num_layers=1, eval_mode=False)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 32, (48, 10), generator=g)]

    def collate(b):
        return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)

    make = make_optimizer_factory("galore", {"rank": 4, "update_proj_gap": 2, "scale": 1.0, "layerwise": layerwise},
                                  lr=5e-3, weight_decay=0.0, betas=(0.9, 0.999))
    acc = make_accelerator("no", cpu=True)
    if acc.is_main_process:
        save_file({n: p.detach().clone() for n, p in model.named_parameters()}, str(out / "init.safetensors"))
    res = fit(model, data, collate_fn=collate, accelerator=acc, output_dir=out / "run", max_steps=4,
              batch_size=batch, grad_accum=accum, lr=5e-3, progress=False, log_every=0, resume=False,
              max_grad_norm=None, make_optimizer=make, schedule="constant")
    weights = {n: p.detach().contiguous() for n, p in res.model.named_parameters()}
    save_file(weights, str(out / f"rank{acc.process_index}.safetensors"))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
