"""第 02 章：自注意力（self-attention）。

attention_reference 是照着公式手写的版本，softmax(QKᵀ/√d + mask)·V，能拿到注意力权重画图；
CausalSelfAttention 默认走 PyTorch 的 F.scaled_dot_product_attention（SDPA：在 GPU 上自动用
FlashAttention 等融合内核），两条路径数学上完全一样（tests/test_attention.py 里有断言）。
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_int


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) 的布尔矩阵，True 表示「可以看」：下三角（含对角线）。"""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                        dropout: nn.Module | None = None, return_weights: bool = False):
    """手写的缩放点积注意力。q, k, v: (..., T, d) → 输出 (..., T, d)。

    1. 打分：scores = q·kᵀ / √d          (..., T, T)
    2. 因果掩码：未来位置的分数设为 -inf
    3. softmax 按行归一化成权重，每行和为 1
    4. 输出 = 权重 · v
    """
    d = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., T, T)
    if causal:
        T = q.size(-2)
        scores = scores.masked_fill(~causal_mask(T, q.device), float("-inf"))
    weights = F.softmax(scores, dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    out = weights @ v
    return (out, weights) if return_weights else out


class CausalSelfAttention(nn.Module):
    """多头因果自注意力：一个线性层同时算出 Q、K、V，拆成 n_head 个头，各自做注意力，再拼回来。"""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, use_sdpa: bool = True):
        super().__init__()
        check_int(n_embd, "n_embd")
        check_int(n_head, "n_head")
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) 必须能被 n_head ({n_head}) 整除：每个头分到 n_embd/n_head 维。"
                             f"请调整其中一个，例如 n_head={_divisor_hint(n_embd, n_head)}。")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # 同时投影出 Q、K、V
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)      # 各头拼接后的输出投影
        self.dropout = dropout
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.use_sdpa = use_sdpa

    def qkv(self, x: torch.Tensor):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) → (B, n_head, T, head_dim)
        shape = (B, T, self.n_head, self.head_dim)
        return (t.view(shape).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            y = attention_reference(q, k, v, causal=True, dropout=self.attn_dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # 把各头拼回 (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """注意力权重 (B, n_head, T, T)，用来画热力图。"""
        q, k, _ = self.qkv(x)
        _, w = attention_reference(q, k, k, causal=True, return_weights=True)
        return w


def _divisor_hint(n_embd: int, n_head: int) -> int:
    divisors = [h for h in range(1, n_embd + 1) if n_embd % h == 0]
    return min(divisors, key=lambda h: abs(h - n_head))
