"""bfloat16 as 16-bit words: float32 rounded to its top half and widened back, with numpy's integer ops.

    codec = Bf16Codec(n)                 # scratch for vectors of up to n elements, made once
    codec.encode(f32, words)             # words (uint16) = f32 rounded to nearest bfloat16, ties to even
    codec.decode(words, f32)             # f32 = the words widened (exactly: every bfloat16 is a float32)
    codec.round_(f32)                    # in place: f32's values after encode and decode, without the words
    round_bf16(x)                        # x's values after a trip through bfloat16 (float32, a new array)

bfloat16 is float32's sign, its 8 exponent bits and the top 7 of its 23 mantissa bits: the same range, about
3 significant decimal digits. Rounding to nearest, ties to even, is adding 0x7FFF plus the lowest kept bit to
the 32-bit pattern and keeping the top 16 bits: a carry out of the mantissa moves the exponent up, and the
largest finite floats round to infinity as IEEE's rounding says. Infinities keep their pattern. A NaN could
lose its mantissa (0x7F800001 would become infinity) or carry into the sign, so NaNs keep their top half
with the quiet bit set. torch.bfloat16 rounds the same way (tests/test_bf16_wire.py compares them).

Used by the exact step's bf16 wire (worker/comm_exact.py, worker/comm_overlap.py): what crosses hosts is
these words, half of float32's bytes. Pure numpy, no MPI.
"""
from __future__ import annotations

import numpy as np

QUIET_NAN_BIT = np.uint32(0x0040)   # in the top half: the highest mantissa bit bfloat16 keeps
ROUNDING_BIAS = np.uint32(0x7FFF)
UPPER_HALF = np.uint32(0xFFFF0000)


class Bf16Codec:
    """float32 <-> bfloat16 words, with its scratch kept between calls (a step encodes the same sizes again)."""

    def __init__(self, n: int = 0):
        self._wide = np.empty(n, np.uint32)
        self._nan = np.empty(n, np.bool_)

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._wide) < n:
            self._wide = np.empty(n, np.uint32)
            self._nan = np.empty(n, np.bool_)
        return self._wide[:n], self._nan[:n]

    def encode(self, src: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the bfloat16 words of float32 `src` (round to nearest, ties to even) into uint16 `out`."""
        if src.dtype != np.float32 or out.dtype != np.uint16 or src.shape != out.shape:
            raise ValueError(f"encode needs float32 in and uint16 out of one shape, got {src.dtype}{src.shape} "
                             f"and {out.dtype}{out.shape}")
        bits = src.view(np.uint32)
        wide, nan = self._scratch(src.size)
        wide = wide.reshape(src.shape)
        np.right_shift(bits, 16, out=wide)
        np.bitwise_and(wide, 1, out=wide)          # the lowest bit kept: a tie goes to the even neighbour
        np.add(wide, ROUNDING_BIAS, out=wide)
        np.add(wide, bits, out=wide)               # no NaN-free pattern wraps: 0xFF800000 + 0x8000 fits
        np.right_shift(wide, 16, out=wide)
        np.copyto(out, wide, casting="unsafe")     # the top half, now in the low 16 bits
        nan = nan.reshape(src.shape)
        np.isnan(src, out=nan)
        if nan.any():                              # rare (a diverging step): keep them NaN, quiet
            out[nan] = ((bits[nan] >> np.uint32(16)) | QUIET_NAN_BIT).astype(np.uint16)
        return out

    def round_(self, x: np.ndarray) -> np.ndarray:
        """Round float32 `x` to bfloat16 values in place: encode and decode in one, without the 16-bit words."""
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            raise ValueError(f"round_ needs a C-contiguous float32 array, got {x.dtype}")
        bits = x.reshape(-1).view(np.uint32)
        wide, nan = self._scratch(bits.size)
        np.isnan(x.reshape(-1), out=nan)
        saved = bits[nan] if nan.any() else None    # rare: NaNs keep their own top half, made quiet
        np.right_shift(bits, 16, out=wide)
        np.bitwise_and(wide, 1, out=wide)
        np.add(wide, ROUNDING_BIAS, out=wide)
        np.add(bits, wide, out=bits)
        np.bitwise_and(bits, UPPER_HALF, out=bits)
        if saved is not None:
            bits[nan] = (saved & UPPER_HALF) | (QUIET_NAN_BIT << np.uint32(16))
        return x

    @staticmethod
    def decode(words: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the float32 values of bfloat16 `words` into `out` (exact: the low 16 bits become zero)."""
        if words.dtype != np.uint16 or out.dtype != np.float32 or words.shape != out.shape:
            raise ValueError(f"decode needs uint16 in and float32 out of one shape, got {words.dtype}{words.shape} "
                             f"and {out.dtype}{out.shape}")
        bits = out.view(np.uint32)
        np.copyto(bits, words, casting="unsafe")
        np.left_shift(bits, 16, out=bits)
        return out


def round_bf16(x) -> np.ndarray:
    """float32 `x` after a trip through bfloat16 (a new float32 array)."""
    src = np.ascontiguousarray(x, np.float32)
    words = np.empty(src.shape, np.uint16)
    return Bf16Codec.decode(Bf16Codec(src.size).encode(src, words), np.empty(src.shape, np.float32))
