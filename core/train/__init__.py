"""The one training loop (``loop.fit``) and its parts: the options (``config``), the run's identity
for resume checks (``identity``), data order, LR schedules, hooks, metrics, checksummed atomic
checkpoints with exact resume, process groups with a collective timeout (``distributed``), Ctrl-C
handling (``interrupt``)."""
