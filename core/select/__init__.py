"""Training-data selection: LESS (``less.py``), with its per-example gradients (``grads.py``) and
random projection (``projection.py``)."""
