"""Edge model compression: one command from a trained PyTorch model to a verified engine."""
__version__ = "0.1.0"

from .api import Result, compress  # noqa: E402

__all__ = ["Result", "compress", "__version__"]
