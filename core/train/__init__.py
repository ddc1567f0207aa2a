"""The one training loop (``loop.fit``) and its parts: data order, LR schedules, hooks, metrics,
atomic checkpoints with exact resume."""
