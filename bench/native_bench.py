"""Fused native kernels vs the PyTorch composites, forward + backward, CPU.

    python bench/native_bench.py [--repeats 15] [--threads 1 2]

Pairs (each timed as forward + backward to the inputs that learn):
  * LSQ fake quant, 256x1024 activations, per channel (axis 1 and 0) and per tensor:
    compressor.native.lsq_fake_quant vs torch._fake_quantize_learnable_per_{channel,tensor}_affine
  * distillation loss, 64x10 and 64x30522 logits, T=4:
    compressor.native.kd_loss vs F.kl_div(F.log_softmax(s/T), F.softmax(t/T), "batchmean") * T^2

Method: one process; for each thread count the two sides alternate (A B, then B A, ...) in rounds
of enough iterations to last a few milliseconds; the table gives the median wall time per
iteration over the rounds and the ratio composite / fused (> 1: fused is faster). The ratio of
median process CPU times is printed beside it: on a shared machine it is the steadier number for
one thread (with two threads it also counts the time OpenMP threads spend waiting).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import compressor.native as native  # noqa: E402


def _lsq_case(axis):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1024, generator=g)
    gy = torch.randn(256, 1024, generator=g)
    qmin, qmax = -128, 127
    if axis is None:
        scale = (x.abs().max() * 0.9 / qmax).reshape(1)  # clips the largest values
    else:
        scale = x.abs().amax(dim=1 - axis) * 0.9 / qmax
    # No x/s within half a step outside [qmin, qmax]: there torch's mask (round(x/s) in range) and
    # LSQ's (x/s in range) differ, and the outputs are meant to be compared below.
    v = x / (scale if axis is None else scale.reshape([-1 if d == axis else 1 for d in range(2)]))
    band = ((v > qmax) & (v <= qmax + 0.5)) | ((v < qmin) & (v >= qmin - 0.5))
    x = torch.where(band, x * 1.1, x)
    channels = scale.numel()
    numel_per_scale = x.numel() // channels
    grad_factor = 1.0 / (numel_per_scale * qmax) ** 0.5
    x.requires_grad_(True)
    scale.requires_grad_(True)
    zero_point = torch.zeros(channels)

    def fused():
        y = native.lsq_fake_quant(x, scale, qmin, qmax, axis=axis, grad_scale=grad_factor)
        return y, torch.autograd.grad(y, (x, scale), gy)

    if axis is None:
        def composite():
            y = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, qmin, qmax, grad_factor)
            return y, torch.autograd.grad(y, (x, scale), gy)
    else:
        def composite():
            y = torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, axis, qmin, qmax,
                                                                   grad_factor)
            return y, torch.autograd.grad(y, (x, scale), gy)

    name = "lsq 256x1024 " + ("per-tensor" if axis is None else f"per-channel axis={axis}")
    ref = "torch._fake_quantize_learnable_per_" + ("tensor" if axis is None else "channel") + "_affine"
    return name, ref, fused, composite


def _kd_case(rows, classes, temperature=4.0):
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(rows, classes, generator=g) * 3).requires_grad_(True)
    t = torch.randn(rows, classes, generator=g) * 3

    def fused():
        loss = native.kd_loss(s, t, temperature)
        return loss, torch.autograd.grad(loss, (s,))

    def composite():
        loss = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1),
                        reduction="batchmean") * (temperature * temperature)
        return loss, torch.autograd.grad(loss, (s,))

    return f"kd_loss {rows}x{classes} T={temperature:g}", "F.kl_div(log_softmax)", fused, composite


def _time(fn, iters):
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters


def _compare(fused, composite, repeats, target_s=0.003):
    """Median seconds per iteration (wall, process CPU) of each side, rounds alternating A B B A."""
    for _ in range(5):
        fused()
        composite()
    once = max(_time(composite, 3)[0], _time(fused, 3)[0], 1e-6)
    iters = max(1, int(target_s / once))
    a, b = [], []
    for r in range(repeats):
        order = ((fused, a), (composite, b)) if r % 2 == 0 else ((composite, b), (fused, a))
        for fn, out in order:
            out.append(_time(fn, iters))
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    return (med(a, 0), med(a, 1)), (med(b, 0), med(b, 1))


def _check(name, fused, composite):
    (yf, gf), (yc, gc) = fused(), composite()
    dy = (yf.detach() - yc.detach()).abs().max().item()
    if name.startswith("lsq"):
        differ = (gf[0] != gc[0]).float().mean().item()
        ds = ((gf[1] - gc[1]).abs().max() / gc[1].abs().max()).item()
        return f"max |y diff| {dy:.1e}; x-grad differs at {differ:.3%} of elements; scale-grad rel diff {ds:.1e}"
    dg = ((gf[0] - gc[0]).abs().max() / gc[0].abs().max()).item()
    return f"|loss diff| {dy:.1e}; student-grad rel diff {dg:.1e}"


def _load():
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21, help="A/B rounds per case (median reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    native.set_backend("native")
    t0 = time.perf_counter()
    native.load(strict=True)
    info = native.build_info()
    print(f"native ops: {info['library']} (ready in {time.perf_counter() - t0:.1f} s; flags {' '.join(info['cflags'])})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available\n")

    cases = [_lsq_case(1), _lsq_case(0), _lsq_case(None), _kd_case(64, 10), _kd_case(64, 30522)]
    print(f"before: {_load()} ({os.cpu_count()} cpus)")
    header = (f"{'case':<34} {'thr':>3} {'composite ms':>13} {'fused ms':>9} {'speedup':>8} "
              f"{'(cpu-time speedup)':>19}   composite")
    print(header)
    print("-" * len(header))
    saved = torch.get_num_threads()
    worst = {}
    for name, ref, fused, composite in cases:
        for n in args.threads:
            torch.set_num_threads(n)
            (tf, cf), (tc, cc) = _compare(fused, composite, args.repeats)
            ratio = tc / tf
            op = name.split()[0]
            worst[(op, n)] = min(worst.get((op, n), float("inf")), ratio)
            print(f"{name:<34} {n:>3} {tc * 1e3:>13.3f} {tf * 1e3:>9.3f} {ratio:>7.2f}x {cc / cf:>18.2f}x   {ref}")
    torch.set_num_threads(saved)
    print(f"after: {_load()}")
    print()
    for name, _, fused, composite in cases:
        print(f"check {name}: {_check(name, fused, composite)}")
    print()
    print("lowest wall-clock speedup: " + ", ".join(f"{op} ({n} thr) {v:.2f}x" for (op, n), v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
