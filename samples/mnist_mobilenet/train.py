"""Train the MobileNetV2-style MNIST teacher and save it as a torch.export program.

Run from the repository root:

    python samples/mnist_mobilenet/train.py [--out samples/mnist_mobilenet/teacher.pt2] [--epochs N]

Same data, split, augmentation and export as samples/mnist/train.py (whose helpers it uses);
writes the ExportedProgram (dynamic batch, eval mode) and a `.json` metadata file beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from compressor.datasets.mnist import load_mnist_split  # noqa: E402
from samples.mnist.model import count_macs  # noqa: E402
from samples.mnist.train import accuracy, atomic_write, random_shift  # noqa: E402
from samples.mnist_mobilenet.model import MnistMobileNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("samples/mnist_mobilenet/teacher.pt2"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2, help="peak OneCycle learning rate")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train, x_test, y_test = map(torch.from_numpy, load_mnist_split(seed=0))
    model = MnistMobileNet()
    macs, params = count_macs(model), sum(p.numel() for p in model.parameters())
    print(f"MnistMobileNet: {macs / 1e6:.2f} MMACs/image, {params} params", flush=True)

    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=4e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=-(-len(x_train) // args.batch_size))
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb = random_shift(x_train[idx], 2, gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch}/{args.epochs}  test acc {accuracy(model, x_test, y_test):.4f}  "
              f"{time.perf_counter() - start:.0f}s", flush=True)
    train_seconds = time.perf_counter() - start

    model = model.eval().to(memory_format=torch.contiguous_format)
    test_acc = accuracy(model, x_test, y_test)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (x_test[:2].clone(),), dynamic_shapes={"x": {0: batch}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: torch.export.save(ep, tmp))
    meta = {"model": "samples.mnist_mobilenet.model:MnistMobileNet",
            "input": {"shape": ["batch", 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0]},
            "test_accuracy": round(test_acc, 4), "test_size": len(x_test), "split_seed": 0, "seed": args.seed,
            "epochs": args.epochs, "batch_size": args.batch_size, "max_lr": args.lr, "macs_per_image": macs,
            "parameters": params, "train_seconds": round(train_seconds, 1), "torch_version": torch.__version__}
    meta_path = args.out.with_suffix(".json")
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    print(f"test accuracy {test_acc:.4f}; saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
