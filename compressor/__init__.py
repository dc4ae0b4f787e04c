"""Edge model compression: one command from a trained PyTorch model to a verified engine."""
from .version import __version__

from .api import Result, compress  # noqa: E402

__all__ = ["Result", "compress", "__version__"]
