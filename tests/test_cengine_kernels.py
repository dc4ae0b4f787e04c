"""Kernel-level tests of native/cengine: the scalar C kernels against numpy references (through
ctypes), and the self-test program's checksums identical across the host scalar, host SIMD,
rv64gc and rv64gcv builds (the RVV build at several VLENs)."""

from __future__ import annotations

import ctypes as C
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from compressor.backends.cengine import fixedpoint as fp
from compressor.backends.cengine.emit import kernels_dir
from compressor.backends.cengine.toolchain import missing_tools

KDIR = kernels_dir()
SRCS = sorted(str(p) for p in KDIR.glob("ce_*.c"))
I8P, I32P, F32P = C.POINTER(C.c_int8), C.POINTER(C.c_int32), C.POINTER(C.c_float)


class ConvT(C.Structure):
    _fields_ = [(n, C.c_int32) for n in (
        "cin hin win cout hout wout kh kw sh sw dh dw pt pl pb pr groups in_zp out_zp lo hi ntile".split())] + [
        ("w", I8P), ("bias", I32P), ("mult", I32P), ("shift", I32P)]


class PoolT(C.Structure):
    _fields_ = [(n, C.c_int32) for n in (
        "c hin win hout wout kh kw sh sw dh dw pt pl pb pr in_zp out_zp count_include_pad".split())] + [
        ("mult", I32P), ("shift", I32P)]


def _build_lib(tmp: Path, name: str, extra: list[str]) -> C.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no host C compiler")
    out = tmp / f"lib{name}.so"
    subprocess.run([cc, "-std=c99", "-O2", "-fPIC", "-shared", "-ffp-contract=off", f"-I{KDIR}", *extra,
                    *SRCS, "-lm", "-o", str(out)], check=True)
    return C.CDLL(str(out))


@pytest.fixture(scope="module", params=["scalar", "native"])
def lib(request, tmp_path_factory):
    extra = ["-DCE_SCALAR_ONLY"] if request.param == "scalar" else ["-march=native"]
    return _build_lib(tmp_path_factory.mktemp("celib"), request.param, extra)


def p8(a):
    return a.ctypes.data_as(I8P)


def p32(a):
    return a.ctypes.data_as(I32P)


def pf(a):
    return a.ctypes.data_as(F32P)


def rand_mults(rng, n):
    m = rng.integers(1 << 30, 1 << 31, n, dtype=np.int64).astype(np.int32)
    s = rng.integers(36, 44, n).astype(np.int32)
    return m, s


# ---- numpy references --------------------------------------------------------------------------
def conv_ref(x, w, bias, zx, s, pads, d, groups):
    """int64 accumulators of a grouped 2-D convolution of (x - zx) (zero padding = real zero)."""
    C_, H, W = x.shape
    M, cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    xp = np.zeros((C_, H + pt + pb, W + pl + pr), np.int64)
    xp[:, pt:pt + H, pl:pl + W] = x.astype(np.int64) - zx
    Ho = (H + pt + pb - ((kh - 1) * d[0] + 1)) // s[0] + 1
    Wo = (W + pl + pr - ((kw - 1) * d[1] + 1)) // s[1] + 1
    out = np.zeros((M, Ho, Wo), np.int64)
    mg = M // groups
    for m in range(M):
        g = m // mg
        for c in range(cg):
            for ky in range(kh):
                for kx in range(kw):
                    patch = xp[g * cg + c, ky * d[0]: ky * d[0] + (Ho - 1) * s[0] + 1: s[0],
                               kx * d[1]: kx * d[1] + (Wo - 1) * s[1] + 1: s[1]]
                    out[m] += int(w[m, c, ky, kx]) * patch
    return out + bias.astype(np.int64)[:, None, None]


CONV_CASES = [  # cin, cout, groups, H, W, k, stride, pad, dilation
    (16, 24, 1, 12, 12, 1, 1, 0, 1),  # pointwise
    (3, 8, 1, 17, 13, 3, 2, 1, 1),  # stem: general, strided, padded
    (8, 8, 8, 15, 15, 3, 1, 1, 1),  # depthwise
    (12, 12, 12, 16, 16, 3, 2, 1, 1),  # depthwise, stride 2
    (6, 6, 6, 9, 9, 5, 1, 2, 1),  # depthwise 5x5
    (8, 12, 4, 10, 10, 3, 1, 1, 1),  # grouped
    (5, 7, 1, 11, 9, 3, 1, 2, 2),  # dilated
    (10, 10, 10, 7, 7, 3, 2, 1, 2),  # depthwise dilated strided
    (7, 5, 1, 5, 5, 1, 2, 0, 1),  # 1x1 stride 2 (general path)
    (33, 17, 1, 3, 3, 1, 1, 0, 1),  # pointwise, few columns
    (64, 40, 1, 2, 2, 1, 1, 0, 1),  # pointwise N=4, K=64 (dot-product path)
    (9, 9, 9, 4, 4, 3, 1, 1, 1),  # depthwise small plane
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv_matches_numpy(lib, case):
    cin, cout, groups, H, W, k, s, pad, d = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.integers(-128, 128, (cin, H, W), dtype=np.int8)
    w = rng.integers(-127, 128, (cout, cin // groups, k, k), dtype=np.int8)
    bias = rng.integers(-20000, 20000, cout).astype(np.int32)
    mult, shift = rand_mults(rng, cout)
    zx, zy, lo, hi = 7, -3, -100, 120
    acc = conv_ref(x, w, bias, zx, (s, s), (pad,) * 4, (d, d), groups)
    want = fp.int_requant(acc, mult[:, None, None], shift[:, None, None], zy, lo, hi)
    bias_c = (bias - zx * w.reshape(cout, -1).astype(np.int64).sum(1)).astype(np.int32)
    Ho, Wo = want.shape[1:]
    p = ConvT(cin, H, W, cout, Ho, Wo, k, k, s, s, d, d, pad, pad, pad, pad, groups, zx, zy, lo, hi, 16,
              p8(w), p32(bias_c), p32(mult), p32(shift))
    lib.ce_conv2d_scratch.restype = C.c_size_t
    scratch = np.zeros(lib.ce_conv2d_scratch(C.byref(p)) + 16, np.int8)
    xin = np.concatenate([x.reshape(-1), np.zeros(32, np.int8)])  # vector over-read slack
    y = np.zeros((cout, Ho, Wo), np.int8)
    lib.ce_conv2d(C.byref(p), p8(xin), p8(y), p8(scratch))
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("T,M,K", [(1, 10, 1568), (3, 7, 33), (5, 16, 4)])
def test_gemm_xw_and_float_output(lib, T, M, K):
    rng = np.random.default_rng(T * 1000 + M)
    a = rng.integers(-128, 128, (T, K), dtype=np.int8)
    w = rng.integers(-127, 128, (M, K), dtype=np.int8)
    bias = rng.integers(-5000, 5000, M).astype(np.int32)
    mult, shift = rand_mults(rng, M)
    acc = a.astype(np.int64) @ w.T.astype(np.int64) + bias
    y = np.zeros((T, M), np.int8)
    lib.ce_gemm_xw(T, M, K, p8(a), p8(w), p8(y), M, p32(bias), p32(mult), p32(shift), 2, -128, 127, None, None)
    np.testing.assert_array_equal(y, fp.int_requant(acc, mult, shift, 2))
    fs = (rng.random(M) * 1e-3).astype(np.float32)
    yf = np.zeros((T, M), np.float32)
    lib.ce_gemm_xw(T, M, K, p8(a), p8(w), None, M, p32(bias), None, None, 0, -128, 127, pf(yf), pf(fs))
    np.testing.assert_array_equal(yf, acc.astype(np.float32) * fs)


def test_matmul_activations(lib):
    rng = np.random.default_rng(3)
    T, M, K = 6, 9, 13
    a = rng.integers(-128, 128, (T, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, M), dtype=np.int8)
    za, zb = 5, -3
    acc = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    mult, shift = fp.quantize_multiplier(0.0123)
    y = np.zeros((T, M), np.int8)
    lib.ce_matmul_q8(T, M, K, p8(a), K, za, p8(b), M, zb, p8(y), M, mult, shift, 1, -128, 127)
    np.testing.assert_array_equal(y, fp.int_requant(acc, mult, shift, 1))


@pytest.mark.parametrize("bshape", ["same", "channel", "scalar", "trailing"])
def test_add_broadcast(lib, bshape):
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (4, 5, 6), dtype=np.int8)
    b = {"same": rng.integers(-128, 128, (4, 5, 6)), "channel": rng.integers(-128, 128, (4, 1, 1)),
         "scalar": rng.integers(-128, 128, (1,)), "trailing": rng.integers(-128, 128, (5, 6))}[bshape].astype(np.int8)
    bn, binner = {"same": (120, 1), "channel": (4, 30), "scalar": (1, 120), "trailing": (30, 1)}[bshape]
    (ma, mb), shift = fp.small_multipliers([0.8, 1.3])
    za, zb, zy = 3, -9, 4
    v = (a.astype(np.int64) - za) * ma + (np.broadcast_to(b.reshape((4, 1, 1) if bshape == "channel" else b.shape),
                                                         a.shape).astype(np.int64) - zb) * mb
    want = (np.clip(fp.rne_shift(v, shift), -128 - zy, 127 - zy) + zy).astype(np.int8)
    y = np.zeros_like(a)
    lib.ce_add_q8(a.size, p8(a), za, ma, p8(b), zb, mb, bn, binner, shift, p8(y), zy, -128, 127)
    np.testing.assert_array_equal(y, want)


def test_quantize_matches_onnx_semantics(lib):
    x = np.concatenate([np.linspace(-40, 40, 4001, dtype=np.float32),
                        np.array([0.125, 0.375, -0.125, 1e9, -1e9, np.nan], np.float32)])
    scale, zp = np.float32(0.25), -3
    want = np.clip(np.rint(x / scale) + zp, -128, 127)
    want[np.isnan(x)] = -128
    y = np.zeros(x.size, np.int8)
    lib.ce_quantize_f32(x.size, pf(x), C.c_float(scale), zp, p8(y))
    np.testing.assert_array_equal(y, want.astype(np.int8))
    f = np.zeros(x.size, np.float32)
    lib.ce_dequantize_i8(x.size, p8(y), C.c_float(0.37), 5, pf(f))
    np.testing.assert_array_equal(f, (y.astype(np.float32) - 5) * np.float32(0.37))


def test_requant_and_clamp(lib):
    x = np.arange(-128, 128, dtype=np.int8)
    (m,), shift = fp.small_multipliers([0.61])
    y = np.zeros_like(x)
    lib.ce_requant_q8(x.size, p8(x), -5, m, shift, p8(y), 7, -20, 127)
    v = (x.astype(np.int64) + 5) * m
    want = np.clip(fp.rne_shift(v, shift), -20 - 7, 127 - 7) + 7
    np.testing.assert_array_equal(y, want.astype(np.int8))
    lib.ce_clamp_q8(x.size, p8(x), p8(y), -3, 90)
    np.testing.assert_array_equal(y, np.clip(x, -3, 90))


@pytest.mark.parametrize("cip", [0, 1])
def test_pools(lib, cip):
    rng = np.random.default_rng(5)
    c, H, W, k, s, pad = 3, 9, 7, 3, 2, 1
    x = rng.integers(-128, 128, (c, H, W), dtype=np.int8)
    Ho, Wo = (H + 2 * pad - k) // s + 1, (W + 2 * pad - k) // s + 1
    scratch = np.zeros((H + 2 * pad) * (W + 2 * pad) + 16, np.int8)
    # max pool
    xp = np.full((c, H + 2 * pad, W + 2 * pad), -128, np.int64)
    xp[:, pad:pad + H, pad:pad + W] = x
    want = np.full((c, Ho, Wo), -128, np.int64)
    for ky in range(k):
        for kx in range(k):
            want = np.maximum(want, xp[:, ky: ky + (Ho - 1) * s + 1: s, kx: kx + (Wo - 1) * s + 1: s])
    y = np.zeros((c, Ho, Wo), np.int8)
    p = PoolT(c, H, W, Ho, Wo, k, k, s, s, 1, 1, pad, pad, pad, pad, 0, 0, 0, None, None)
    lib.ce_maxpool_q8(C.byref(p), p8(x), p8(y), p8(scratch))
    np.testing.assert_array_equal(y, want)
    # average pool: divisor k*k (count_include_pad) or the taps inside the image
    zx, zy, sx, sy = -4, 2, 0.05, 0.04
    mult, shift = fp.quantize_multipliers([sx / (sy * n) for n in range(1, k * k + 1)])
    inside = np.zeros((c, H + 2 * pad, W + 2 * pad), np.int64)
    inside[:, pad:pad + H, pad:pad + W] = 1
    xz = np.zeros_like(xp)
    xz[:, pad:pad + H, pad:pad + W] = x.astype(np.int64) - zx
    tot = np.zeros((c, Ho, Wo), np.int64)
    cnt = np.zeros((c, Ho, Wo), np.int64)
    for ky in range(k):
        for kx in range(k):
            sl = (slice(None), slice(ky, ky + (Ho - 1) * s + 1, s), slice(kx, kx + (Wo - 1) * s + 1, s))
            tot += xz[sl]
            cnt += inside[sl]
    d = np.full_like(cnt, k * k) if cip else cnt
    want = fp.int_requant(tot, mult[d - 1], shift[d - 1], zy)
    p = PoolT(c, H, W, Ho, Wo, k, k, s, s, 1, 1, pad, pad, pad, pad, zx, zy, cip, p32(mult), p32(shift))
    lib.ce_avgpool_q8(C.byref(p), p8(x), p8(y), p8(scratch))
    np.testing.assert_array_equal(y, want)
    # global average pool
    m1, s1 = fp.quantize_multiplier(sx / (sy * H * W))
    g = np.zeros(c, np.int8)
    lib.ce_global_avgpool_q8(c, H * W, p8(x), zx, p8(g), m1, s1, zy)
    np.testing.assert_array_equal(g, fp.int_requant(x.reshape(c, -1).astype(np.int64).sum(1) - zx * H * W, m1, s1, zy))


# pools with ceil_mode (ONNX / onnxruntime semantics): H, W, (kh, kw), (sh, sw), pads (t, l, b, r),
# (dh, dw), ceil_mode
POOL_CASES = [
    (9, 7, (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1),  # last windows hang over the end
    (8, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # ... and over the padding
    (5, 5, (2, 2), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # a window starting in the end pad is dropped
    (10, 7, (3, 2), (3, 2), (1, 0, 1, 1), (1, 1), 1),  # asymmetric kernel, strides and pads
    (11, 9, (3, 3), (2, 2), (1, 1, 1, 1), (2, 2), 1),  # dilated
    (6, 13, (3, 3), (2, 4), (2, 1, 2, 1), (1, 1), 1),  # pads of 2, stride 4 across
    (9, 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),  # floor mode, for comparison
]


def pool_out(n, k, s, p0, p1, d, ceil):
    """onnxruntime's pooled size along one axis."""
    span = n + p0 + p1 - (k - 1) * d - 1
    o = (-(-span // s) if ceil else span // s) + 1
    return o - 1 if ceil and (o - 1) * s >= n + p0 else o


def pool_windows(H, W, k, s, pads, d, ceil):
    """For every output position, the (row, col) taps of its window in input coordinates."""
    pt, pl, pb, pr = pads
    Ho, Wo = pool_out(H, k[0], s[0], pt, pb, d[0], ceil), pool_out(W, k[1], s[1], pl, pr, d[1], ceil)
    return Ho, Wo, [[[(oy * s[0] - pt + ky * d[0], ox * s[1] - pl + kx * d[1])
                      for ky in range(k[0]) for kx in range(k[1])] for ox in range(Wo)] for oy in range(Ho)]


def avgpool_ref(x, k, s, pads, d, ceil, cip):
    """(sum of (x - zx) over the taps inside the image, divisor) per output: the divisor counts
    the taps inside the padded input (count_include_pad) or inside the image."""
    c, H, W = x.shape
    pt, pl, pb, pr = pads
    Ho, Wo, win = pool_windows(H, W, k, s, pads, d, ceil)
    tot, div = np.zeros((c, Ho, Wo), np.int64), np.zeros((Ho, Wo), np.int64)
    for oy in range(Ho):
        for ox in range(Wo):
            inside = [(r, q) for r, q in win[oy][ox] if 0 <= r < H and 0 <= q < W]
            padded = [(r, q) for r, q in win[oy][ox] if -pt <= r < H + pb and -pl <= q < W + pr]
            for r, q in inside:
                tot[:, oy, ox] += x[:, r, q]
            div[oy, ox] = max(1, len(padded) if cip else len(inside))
    return tot, div


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize("case", POOL_CASES, ids=[f"pool{i}" for i in range(len(POOL_CASES))])
def test_pools_ceil_mode(lib, case, cip):
    H, W, k, s, pads, d, ceil = case
    c, zx, zy, sx, sy = 3, -4, 2, 0.05, 0.04
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (c, H, W), dtype=np.int8)
    Ho, Wo, win = pool_windows(H, W, k, s, pads, d, ceil)
    # average pool (the model's pads; windows may hang over them)
    mult, shift = fp.quantize_multipliers([sx / (sy * n) for n in range(1, k[0] * k[1] + 1)])
    tot, div = avgpool_ref(x.astype(np.int64) - zx, k, s, pads, d, ceil, cip)
    want = fp.int_requant(tot, mult[div - 1], shift[div - 1], zy)
    y = np.full((c, Ho, Wo), 99, np.int8)
    p = PoolT(c, H, W, Ho, Wo, *k, *s, *d, *pads, zx, zy, cip, p32(mult), p32(shift))
    lib.ce_avgpool_q8(C.byref(p), p8(x), p8(y), None)
    np.testing.assert_array_equal(y, want)
    # max pool: bottom/right pads widened to cover every window, as the code generator does
    pt, pl, pb, pr = pads
    pb = max(pb, (Ho - 1) * s[0] + (k[0] - 1) * d[0] + 1 - H - pt)
    pr = max(pr, (Wo - 1) * s[1] + (k[1] - 1) * d[1] + 1 - W - pl)
    want = np.full((c, Ho, Wo), -128, np.int64)
    for oy in range(Ho):
        for ox in range(Wo):
            for r, q in win[oy][ox]:
                if 0 <= r < H and 0 <= q < W:
                    want[:, oy, ox] = np.maximum(want[:, oy, ox], x[:, r, q])
    scratch = np.zeros((H + pt + pb) * (W + pl + pr) + 32, np.int8)
    p = PoolT(c, H, W, Ho, Wo, *k, *s, *d, pt, pl, pb, pr, 0, 0, 0, None, None)
    lib.ce_maxpool_q8(C.byref(p), p8(x), p8(y), p8(scratch))
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_pool_reference_is_onnxruntime(op):
    """The references above (output size, windows, divisors) are what onnxruntime computes."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    for H, W, k, s, pads, d, ceil in POOL_CASES:
        for cip in ([0, 1] if op == "AveragePool" else [0]):
            attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(pads[:2]) + list(pads[2:]),
                         dilations=list(d), ceil_mode=ceil)
            if op == "AveragePool":
                attrs["count_include_pad"] = cip
            g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "pool",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, H, W])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.log_severity_level = 3  # onnx<22 shape inference disagrees on dropped windows
            sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            x = rng.integers(-50, 50, (2, H, W)).astype(np.float32)
            got = sess.run(None, {"x": x[None]})[0][0]
            if op == "AveragePool":
                tot, div = avgpool_ref(x.astype(np.int64), k, s, pads, d, ceil, cip)
                want = tot / div
            else:
                Ho, Wo, win = pool_windows(H, W, k, s, pads, d, ceil)
                want = np.array([[[max(x[ch, r, q] for r, q in win[oy][ox] if 0 <= r < H and 0 <= q < W)
                                   for ox in range(Wo)] for oy in range(Ho)] for ch in range(2)])
            assert got.shape == want.shape, (op, H, W, k, s, pads, d, ceil)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=str((H, W, k, s, pads, d, ceil, cip)))


def test_transpose(lib):
    x = np.arange(2 * 3 * 5 * 7, dtype=np.int8).reshape(2, 3, 5, 7)
    perm = np.array([0, 2, 3, 1], np.int32)
    dims = np.array(x.shape, np.int32)
    y = np.zeros(x.size, np.int8)
    lib.ce_transpose(4, p32(dims), p32(perm), 1, p8(x), p8(y))
    np.testing.assert_array_equal(y.reshape(2, 5, 7, 3), x.transpose(0, 2, 3, 1))
    xf = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    yf = np.zeros(24, np.float32)
    lib.ce_transpose(2, p32(np.array([4, 6], np.int32)), p32(np.array([1, 0], np.int32)), 4, pf(xf), pf(yf))
    np.testing.assert_array_equal(yf.reshape(6, 4), xf.T)
    # the last axis stays last (attention heads): whole rows move
    for shape, perm in (((2, 5, 3, 7), (0, 2, 1, 3)), ((4, 3, 6), (1, 0, 2)), ((3, 8), (0, 1))):
        xh = np.random.default_rng(1).random(shape).astype(np.float32)
        yh = np.zeros(xh.size, np.float32)
        lib.ce_transpose(len(shape), p32(np.array(shape, np.int32)), p32(np.array(perm, np.int32)), 4, pf(xh), pf(yh))
        np.testing.assert_array_equal(yh.reshape(xh.transpose(perm).shape), xh.transpose(perm))


def test_float_kernels(lib):
    from scipy.special import erf

    lib.ce_expf.restype = C.c_float
    lib.ce_expf.argtypes = [C.c_float]
    lib.ce_erff.restype = C.c_float
    lib.ce_erff.argtypes = [C.c_float]
    for v in np.linspace(-80, 80, 2001):
        e = lib.ce_expf(float(v))
        assert abs(e - np.exp(np.float32(v).astype(np.float64))) <= 4e-7 * np.exp(float(np.float32(v)))
    for v in np.linspace(-6, 6, 2001):
        assert abs(lib.ce_erff(float(v)) - erf(float(np.float32(v)))) < 6e-7
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((7, 33)) * 3).astype(np.float32)
    y = np.zeros_like(x)
    lib.ce_softmax_f32(7, 33, pf(x), pf(y))
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(1, keepdims=True), rtol=2e-6, atol=1e-8)
    g, b = rng.random(33).astype(np.float32), rng.random(33).astype(np.float32)
    lib.ce_layernorm_f32(7, 33, pf(x), pf(g), pf(b), C.c_float(1e-5), pf(y))
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5) * g + b, rtol=1e-5, atol=1e-5)
    lib.ce_gelu_f32(x.size, pf(x), pf(y))
    np.testing.assert_allclose(y, 0.5 * x * (1 + erf(x / np.sqrt(2))), rtol=1e-5, atol=2e-6)


def test_fixed_point_multiplier():
    for m in [1e-9, 3.7e-5, 0.0123, 0.5, 0.99999, 1.0, 3.5, 1000.0]:
        mult, shift = fp.quantize_multiplier(m)
        assert (1 << 30) <= mult < (1 << 31) and 1 <= shift <= 63
        assert abs(mult * 2.0**-shift - m) <= m * 2**-30
    assert fp.quantize_multiplier(0.0) == (0, 1)
    # one rounding of the exact product, ties to even (like QuantizeLinear)
    assert fp.int_requant(np.array([3, -3, 5, -5]), 1 << 30, 32, 0).tolist() == [1, -1, 1, -1]
    assert fp.int_requant(np.array([2, 6, -2, -6, 10]), 1 << 30, 32, 0).tolist() == [0, 2, 0, -2, 2]


# ---- the same cases in every build ---------------------------------------------------------------
def _selftest(tmp: Path, arch: str, vlen: int = 128) -> str:
    exe = tmp / f"selftest_{arch}"
    src = [str(KDIR / "tests" / "ce_selftest.c"), *SRCS]
    base = ["-std=c99", "-O2", "-ffp-contract=off", f"-I{KDIR}"]
    if arch.startswith("host"):
        cc = shutil.which("cc") or "gcc"
        extra = ["-DCE_SCALAR_ONLY"] if arch == "host-scalar" else ["-march=native"]
        if not exe.exists():
            subprocess.run([cc, *base, *extra, *src, "-lm", "-o", str(exe)], check=True)
        return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    rv = ["--target=riscv64-linux-gnu", "--sysroot=/usr/riscv64-linux-gnu", "-static", "-march=" + arch]
    if arch == "rv64gcv":
        rv += ["-DCE_USE_RVV", "-fno-vectorize", "-fno-slp-vectorize"]
    if not exe.exists():
        subprocess.run(["clang-16", *base, *rv, *src, "-lm", "-o", str(exe)], check=True)
    cpu = f"rv64,v=true,vlen={vlen}" if arch == "rv64gcv" else "rv64"
    return subprocess.run(["qemu-riscv64", "-cpu", cpu, str(exe)], check=True, capture_output=True, text=True).stdout


def test_selftest_identical_across_builds(tmp_path):
    if missing_tools("rv64gcv", run=True):
        pytest.fail("RISC-V toolchain missing: " + ", ".join(missing_tools("rv64gcv", run=True)))
    ref = _selftest(tmp_path, "host-scalar")
    assert ref.count("\n") > 40
    outs = {"host-native": _selftest(tmp_path, "host-native"), "rv64gc": _selftest(tmp_path, "rv64gc")}
    for vlen in (128, 256, 512):  # VLEN-agnostic RVV code
        outs[f"rv64gcv/vlen={vlen}"] = _selftest(tmp_path, "rv64gcv", vlen)
    for name, out in outs.items():
        assert out == ref, f"{name} differs from the scalar reference"
