"""Train the bundled MNIST teacher and save it as a torch.export program.

Run from the repository root:

    python samples/mnist/train.py [--out samples/mnist/teacher.pt2] [--epochs N] [--seed 0]

Writes the ExportedProgram (dynamic batch dimension, eval mode) to ``--out``
and a metadata file with the same stem and a ``.json`` suffix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# Make `compressor` and `samples` importable when run as a script.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from compressor.datasets.mnist import load_mnist_split  # noqa: E402
from samples.mnist.model import MnistResNet, count_macs  # noqa: E402


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels, filling with zeros."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    preds = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return (preds == y).float().mean().item()


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path`` in one step.

    The temporary file keeps ``path``'s name inside a private directory next
    to it: torch.export.save names the archive's root folder after the file.
    """
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp_dir:
        tmp = os.path.join(tmp_dir, path.name)
        write(tmp)
        os.replace(tmp, path)


def arguments(out: str, epochs: int, lr: float) -> argparse.Namespace:
    """The command line every MNIST teacher's training script takes, with that teacher's defaults."""
    parser = argparse.ArgumentParser(description="Train an MNIST teacher and save it as a torch.export program")
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=lr, help="peak OneCycle learning rate")
    return parser.parse_args()


def train_teacher(build: Callable[[], torch.nn.Module], model_ref: str, args: argparse.Namespace,
                  weight_decay: float) -> None:
    """Train the model `build()` makes (after seeding, so its initial weights follow --seed) on the 4000 training digits (random shifts, AdamW with OneCycle), then write it
    as an ExportedProgram with a dynamic batch to ``args.out`` and its metadata beside it.
    `model_ref` ("module:Class") is recorded in the metadata."""
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    # The split uses its own fixed seed so every teacher is scored on the same test set.
    x_train, y_train, x_test, y_test = map(torch.from_numpy, load_mnist_split(seed=0))
    model = build()
    macs = count_macs(model)
    params = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__}: {macs / 1e6:.2f} MMACs/image, {params / 1e6:.3f} M params, "
          f"train {len(x_train)}, test {len(x_test)}")

    # channels_last roughly triples CPU training speed for these convs.
    model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total_loss = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb = random_shift(x_train[idx], 2, gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        acc = accuracy(model, x_test, y_test)
        print(f"epoch {epoch}/{args.epochs}  loss {total_loss / len(x_train):.4f}  "
              f"test acc {acc:.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    train_seconds = time.perf_counter() - start

    # Export in eval mode with standard layout and a dynamic batch, so the
    # program accepts any batch size and carries its input spec.
    model = model.eval().to(memory_format=torch.contiguous_format)
    test_acc = accuracy(model, x_test, y_test)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # Clone the example: a slice is a view, and the archive would store the
    # whole test set behind it as the sample input.
    example = x_test[:2].clone()
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.export.save(ep, tmp))
    meta = {
        "model": model_ref,
        "input": {"shape": ["batch", 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0]},
        "test_accuracy": round(test_acc, 4),
        "test_size": len(x_test),
        "split_seed": 0,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_lr": args.lr,
        "macs_per_image": macs,
        "parameters": params,
        "train_seconds": round(train_seconds, 1),
        "torch_version": torch.__version__,
    }
    meta_path = out.with_suffix(".json")
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    print(f"test accuracy {test_acc:.4f}; saved {out} ({out.stat().st_size / 1e6:.2f} MB) "
          f"and {meta_path}")


def main() -> None:
    args = arguments("samples/mnist/teacher.pt2", epochs=6, lr=4e-3)
    train_teacher(MnistResNet, "samples.mnist.model:MnistResNet", args, weight_decay=5e-4)


if __name__ == "__main__":
    main()
