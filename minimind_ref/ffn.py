"""The SwiGLU feed-forward network: down(act(gate(x)) * up(x)) (chapter 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MiniMindConfig

ACT2FN = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class FeedForward(nn.Module):
    def __init__(self, config: MiniMindConfig, intermediate_size: int | None = None):
        super().__init__()
        width = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)  # decides how much of each feature passes
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)  # the features themselves
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.act_fn(self.gate_proj(x))  # (..., width)
        up = self.up_proj(x)  # (..., width)
        return self.dropout(self.down_proj(gate * up))
