"""adaptome.core: adapters, optimizers, training loop, metrics and CLI shared by every domain.

Importing this package does no work; submodules are imported where they are used.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
