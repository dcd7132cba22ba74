"""``F.softplus`` (β 1, threshold 20) and its gradient on CPU tensors, faster than torch's CPU
kernels and with their values: the deformation field's hidden activations, [B·N, 256] per joint
step, are most of what the field costs on a CPU after its matrix products.

- float32: numpy's vectorised exp and log1p (torch's float32 kernel runs a scalar log1p per
  element); the same values to float32 rounding; the gradient is torch's ``softplus_backward``.
- bfloat16: a bfloat16 has 65,536 values, so torch's softplus of each is tabulated once and
  looked up by the 16 bits (the same values as torch's bfloat16 kernel, bit for bit; that kernel
  runs a scalar log1p per element). The look-up is a compiled loop on one thread (numba, as the
  Gaussian compositing: a thread pool of numba's beside torch's cost more than it gained on 2
  cores); torch's index_select of the table needed the codes widened to int64 first, and those
  two passes took 2.7 times the loop's time (docs/benchmarks.md).

The gradient is torch's ``softplus_backward`` in both: vectorised, and faster than a loop of ours
(a bit-identical numba version of the bfloat16 one took twice its time).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import Tensor

THRESHOLD = 20.0
"""torch's default: above it softplus(x) = x and its gradient passes through."""


@lru_cache(maxsize=None)
def _bfloat16_softplus_table() -> np.ndarray:
    """uint16 [65536]: torch's bfloat16 softplus of every bfloat16 value (as bits), indexed by
    the value's 16 bits."""
    codes = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return F.softplus(codes.float()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).copy()


@njit(cache=True)
def _gather(codes: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    for i in range(codes.shape[0]):
        out[i] = table[codes[i]]


def _bits(x: Tensor) -> np.ndarray:
    """A contiguous CPU bfloat16 tensor's 16-bit codes, flat, without a copy."""
    return x.view(torch.int16).numpy().view(np.uint16).reshape(-1)


class _SoftplusWithTorchBackward(torch.autograd.Function):
    """A softplus whose forward a subclass computes its own way; the backward is torch's
    ``softplus_backward`` on the saved input (vectorised in both dtypes)."""

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.softplus_backward(grad, x, 1.0, THRESHOLD)


class _CpuFloat32Softplus(_SoftplusWithTorchBackward):
    """Above the threshold log1p(e^-|x|) < 2e-9, below half an ulp of x: the same values."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        values = x.detach().numpy()
        out = np.abs(values)
        np.negative(out, out=out)
        np.exp(out, out=out)
        np.log1p(out, out=out)
        out += np.maximum(values, 0)
        return torch.from_numpy(out)


class _CpuBfloat16Softplus(_SoftplusWithTorchBackward):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        out = torch.empty_like(x)
        _gather(_bits(x), _bfloat16_softplus_table(), _bits(out))
        return out


def softplus(x: Tensor) -> Tensor:
    """``F.softplus(x)`` (β 1, threshold 20): float32 and bfloat16 CPU tensors through the loops
    above, anything else through torch."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return _CpuFloat32Softplus.apply(x.contiguous())
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return _CpuBfloat16Softplus.apply(x.contiguous())
    return F.softplus(x)
