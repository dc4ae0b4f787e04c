"""Train the MobileNetV2-style MNIST teacher and save it as a torch.export program.

Run from the repository root:

    python samples/mnist_mobilenet/train.py [--out samples/mnist_mobilenet/teacher.pt2] [--epochs N]

The same training and export as samples/mnist/train.py (its train_teacher, with this model);
writes the ExportedProgram (dynamic batch, eval mode) and a `.json` metadata file beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from samples.mnist.train import arguments, train_teacher  # noqa: E402
from samples.mnist_mobilenet.model import MnistMobileNet  # noqa: E402


def main() -> None:
    args = arguments("samples/mnist_mobilenet/teacher.pt2", epochs=10, lr=1e-2)
    train_teacher(MnistMobileNet, "samples.mnist_mobilenet.model:MnistMobileNet", args, weight_decay=4e-5)


if __name__ == "__main__":
    main()
