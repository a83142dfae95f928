"""RMSNorm: root-mean-square normalisation with a learnable gain (chapter 1)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x**2) + eps), over the last dimension.

    The statistics are computed in at least float32 (squares of bf16/fp16 values lose precision
    or overflow; float64 stays float64), and the normalised tensor is cast back to the input
    dtype before the gain is applied, so a bf16 activation gives a bf16 result when the
    module itself is bf16.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # start as pure normalisation

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # rsqrt: one kernel for 1/sqrt; keepdim: (..., 1) broadcasts against (..., D)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(
                f"RMSNorm expects last dimension {self.weight.shape[0]}, got input of shape {tuple(x.shape)}"
            )
        compute_dtype = torch.promote_types(x.dtype, torch.float32)  # x.float() for fp16/bf16
        return self.weight * self._norm(x.to(compute_dtype)).type_as(x)
