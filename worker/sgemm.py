"""GEMMs of the exact step that do less work than its reference ones, used only where probed to give their bits.

The reference (worker/mlp_bylayer.py): every micro-batch's products are GEMMs of that part alone, and its
weight gradient is written, then added to its sibling's along a tree. Two shortcuts, each probed on random
data (a BLAS's rounding does not depend on values) for the job's shapes at the BLAS's current threads:

    one_gemm_is_exact(fan_in, fan_out, parts, rows)   # (forward, delta): may a layer's k parts run as ONE GEMM?

    if fused_add_is_exact(fan_in, fan_out, rows):   # probed on random data, once per shape (a few ms)
        add_weight_grad(a, delta, out)               # out += a.T @ delta: one GEMM, no temporary, no add pass

One GEMM over all of a rank's rows: OpenBLAS rounds a row by where it falls in its GEMM's tiles (Haswell
kernel: rows match only when a part's rows are a multiple of 24), so this holds for some part sizes only.

The fused add. Why: the exact step (worker/stepexact.py) adds each micro-batch's weight gradient to its left sibling's
along a tree. Written and then added, a right leaf costs a pass that zeroes its buffer, the GEMM's pass,
and an add pass that reads two (fan_in, fan_out) matrices and writes one. An sgemm with beta = 1 adds the
product into C as it stores it; when K (the part's rows) fits in one of OpenBLAS's K blocks, each element
is the product's own rounded sum plus one rounded addition: the bits of (a.T @ delta) + out. That is a
property of the kernel, not a promise, so `fused_add_is_exact` checks it against numpy's matmul followed by
numpy's add, and the caller fuses only where the two are equal bit for bit.

The call goes to the library numpy itself loaded (its path from threadpoolctl), so it runs the kernel and
thread count the process chose (worker/blas.py, worker/threads.py), never a second BLAS. Where numpy's BLAS
is not OpenBLAS, or its cblas_sgemm is not found, nothing is fused.
"""
from __future__ import annotations

import ctypes

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112     # CBLAS enum values
# Below this many weights the ctypes call (~6 us more than numpy's matmul) costs more than the add pass it saves
# (measured with thread CPU time on the AMD EPYC VM: 128x128 loses, 256x256 and above win); smaller layers take
# numpy's GEMM into a scratch matrix and then the add, which is the reference itself.
FUSE_MIN_WEIGHTS = 1 << 16
_NAMES = (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True), ("scipy_cblas_sgemm", False),
          ("cblas_sgemm", False))
_sgemm = None
_looked = False


def _function():
    """numpy's OpenBLAS cblas_sgemm as a ctypes function, or None."""
    global _sgemm, _looked
    if _looked:
        return _sgemm
    _looked = True
    from threadpoolctl import threadpool_info
    paths = [i["filepath"] for i in threadpool_info() if i.get("internal_api") == "openblas" and i.get("filepath")]
    if not paths:
        return None
    try:
        library = ctypes.CDLL(paths[0])     # already loaded by numpy: dlopen hands back the same library
    except OSError:
        return None
    for name, wide in _NAMES:
        fn = getattr(library, name, None)
        if fn is not None:
            index = ctypes.c_int64 if wide else ctypes.c_int32
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, index, index, index, ctypes.c_float,
                           ctypes.c_void_p, index, ctypes.c_void_p, index, ctypes.c_float, ctypes.c_void_p, index]
            fn.restype = None
            _sgemm = fn
            return fn
    return None


def add_weight_grad(a: np.ndarray, delta: np.ndarray, out: np.ndarray) -> None:
    """out += a.T @ delta, in one sgemm with beta = 1. a (K, M), delta (K, N) and out (M, N) must be C-contiguous
    float32 (a part's rows of a layer's activations and deltas, a layer's W-shaped view of a slot)."""
    k, m = a.shape
    n = delta.shape[1]
    if not (a.dtype == delta.dtype == out.dtype == np.float32 and a.flags.c_contiguous and delta.flags.c_contiguous
            and out.flags.c_contiguous and delta.shape[0] == k and out.shape == (m, n)):
        raise ValueError(f"add_weight_grad needs C-contiguous float32 (K, M), (K, N), (M, N); got {a.shape} "
                         f"{a.dtype}, {delta.shape} {delta.dtype}, {out.shape} {out.dtype}")
    _function()(_ROW_MAJOR, _TRANS, _NO_TRANS, m, n, k, 1.0, a.ctypes.data, m, delta.ctypes.data, n, 1.0,
                out.ctypes.data, n)


def worth_fusing(fan_in: int, fan_out: int) -> bool:
    """Is a layer this large worth the ctypes call (see FUSE_MIN_WEIGHTS)?"""
    return fan_in * fan_out >= FUSE_MIN_WEIGHTS


def fused_add_is_exact(fan_in: int, fan_out: int, rows: int, seed: int = 0) -> bool:
    """Does add_weight_grad give, at the BLAS's current thread count, the bits of numpy's matmul then add, for a
    part of `rows` rows of this layer? Checked on random data (a BLAS's rounding does not depend on values)."""
    if rows < 1 or _function() is None:
        return False
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, fan_in), dtype=np.float32)
    delta = rng.standard_normal((rows, fan_out), dtype=np.float32)
    left = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
    want = np.matmul(a.T, delta)
    want += left
    add_weight_grad(a, delta, left)
    return bool(np.array_equal(left, want))


def one_gemm_is_exact(fan_in: int, fan_out: int, parts: int, rows: int, seed: int = 0) -> tuple[bool, bool]:
    """(forward, delta): does one GEMM over `parts` parts of `rows` rows give every part's rows the bits of the
    part's own GEMM, for a @ W (forward) and for delta @ W.T (the delta product)? Costs four GEMMs of the rank's
    rows, once per shape."""
    if parts < 2 or rows < 1:
        return False, False
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
    a = rng.standard_normal((parts * rows, fan_in), dtype=np.float32)
    delta = rng.standard_normal((parts * rows, fan_out), dtype=np.float32)
    forward = np.array_equal(a @ w, np.matmul(a.reshape(parts, rows, fan_in), w).reshape(parts * rows, fan_out))
    back = np.array_equal(delta @ w.T, np.matmul(delta.reshape(parts, rows, fan_out), w.T).reshape(parts * rows, fan_in))
    return forward, back
