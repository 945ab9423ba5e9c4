"""第 01 章：二元语言模型（bigram language model）。

计数版：数一数「字 a 后面跟着字 b」出现了多少次，归一化成概率。
学习版：BigramLM 是一张 V×V 的嵌入表，第 a 行就是「a 后面下一个字」的 logits，用梯度下降学出来。
两者是同一个模型：把计数版的对数概率填进 BigramLM 的表里，得到的损失完全相同（第 01 章有验证）。
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .checks import check_int, check_number, check_tokens, embed, next_token_loss
from .generate import generate_tokens


def bigram_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(V, V) 的计数矩阵 N：N[a, b] = 「a 后面紧跟 b」出现的次数。ids 是一维整数张量（或 numpy 数组）。"""
    check_tokens(ids, "ids", check_int(vocab_size, "vocab_size"))
    ids = torch.as_tensor(ids).long()
    flat = ids[:-1] * vocab_size + ids[1:]
    return torch.bincount(flat, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def bigram_probs(counts: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """加 smoothing 平滑（拉普拉斯平滑）后按行归一化：P[a, b] = (N[a,b]+α) / Σ_b (N[a,b]+α)。"""
    if not torch.is_tensor(counts) or counts.dim() != 2:
        raise ValueError(f"counts 应该是 bigram_counts 返回的 (V, V) 计数矩阵，收到 {type(counts).__name__}。")
    check_number(smoothing, "smoothing")
    p = counts.double() + smoothing
    rows = p.sum(dim=1, keepdim=True)
    if (rows == 0).any():
        raise ValueError("有的字从没出现在前一个位置，又没有平滑，概率没法归一化。请用 smoothing > 0。")
    return (p / rows).float()


def bigram_nll(probs: torch.Tensor, ids: torch.Tensor) -> float:
    """平均负对数似然（negative log-likelihood, NLL），单位是 nats。ids 至少要有两个 token（一对「前一个字 → 下一个字」）。"""
    check_tokens(ids, "ids", probs.size(0))
    if len(ids) < 2:
        raise ValueError(f"ids 只有 {len(ids)} 个 token，至少要两个才有一对「前一个字 → 下一个字」可以算 NLL。")
    ids = torch.as_tensor(ids).long()
    return -probs[ids[:-1], ids[1:]].log().mean().item()


class BigramLM(nn.Module):
    """可学习的二元模型：logits = W[当前字]，W 是 (V, V) 的嵌入表。"""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = check_int(vocab_size, "BigramLM 的 vocab_size")
        self.table = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.table.weight)  # 从均匀分布出发：初始损失正好是 ln V

    @classmethod
    def from_probs(cls, probs: torch.Tensor) -> "BigramLM":
        """用计数得到的概率表构造模型（logits = log P）。"""
        model = cls(probs.size(0))
        with torch.no_grad():
            model.table.weight.copy_(probs.log())
        return model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = embed(self.table, idx)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = next_token_loss(logits, targets)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None) -> torch.Tensor:
        return generate_tokens(self, idx, max_new_tokens, temperature, top_k, seed, block_size=1)
