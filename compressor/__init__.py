"""Edge model compression: one command from a trained PyTorch model to a verified engine."""
import os

# OpenMP's worker threads (torch's intra-op pool) spin at every barrier by default; on shared cores
# they spin while another process holds the core. Distilling a searched MNIST student at load 8.5
# on 2 cores: 10 steps took 41-48 s on 2 threads, 9.4 s on 1, 6.0-9.7 s on 2 with PASSIVE waiting.
# Read once when torch loads libgomp, so only where this package is imported before torch; a
# user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .version import __version__  # noqa: E402

from .api import Result, compress  # noqa: E402

__all__ = ["Result", "compress", "__version__"]
