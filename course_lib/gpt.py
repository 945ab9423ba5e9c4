"""第 03 章：GPT（decoder-only Transformer），和 GPT-2 同一种结构，缩小了尺寸。

GPT
├── wte  词嵌入（token embedding）       (V, C)
├── wpe  位置嵌入（position embedding）  (block_size, C)
├── blocks × n_layer，每个 Block（pre-LayerNorm）：
│     x = x + Attention(LayerNorm(x))   ← 残差连接（residual）
│     x = x + MLP(LayerNorm(x))
├── ln_f 最后的 LayerNorm
└── lm_head 输出层 (C → V)，默认与 wte 共享权重（weight tying）
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention
from .checks import bad_input, check_bools, check_ints, embed, next_token_loss
from .generate import generate_tokens


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64      # 上下文长度：模型一次最多看多少个 token
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True  # lm_head 与 wte 共享权重
    use_sdpa: bool = True     # False → 用第 02 章手写的注意力（慢，但能看清每一步）

    def __post_init__(self):
        check_ints(self, ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
        check_bools(self, ("bias", "tie_weights", "use_sdpa"))
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) 必须能被 n_head ({self.n_head}) 整除："
                             "每个注意力头分到 n_embd / n_head 维。请调整 n_embd 或 n_head。")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout 必须在 [0, 1) 之间，收到 {self.dropout}。")

    def to_dict(self) -> dict:
        return asdict(self)


class MLP(nn.Module):
    """逐位置的前馈网络：C → 4C → GELU → C。"""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, cfg.use_sdpa)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # 先「交流」：每个位置从前面的位置收集信息
        x = x + self.mlp(self.ln_2(x))   # 再「思考」：每个位置各自做非线性变换
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPT 需要一个 GPTConfig，收到 {type(cfg).__name__}。字典请写成 GPT(GPTConfig(**配置))。")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2 的做法：写回残差流的投影层，初始化再缩小 1/√(2·n_layer)，
        # 这样层数再多，残差流的方差也不会越加越大。
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """参数量（共享的权重只算一次）。non_embedding=True 时不算位置嵌入（GPT-2 论文的算法）。"""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        try:
            B, T = idx.shape
        except (AttributeError, ValueError):
            raise bad_input(idx) from None
        if T > self.config.block_size:
            raise ValueError(f"输入长度 {T} 超过了模型的上下文长度 block_size={self.config.block_size}。"
                             "请截取最后 block_size 个 token（generate() 会自动这样做）。")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(embed(self.wte, idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))            # (B, T, V)
        loss = None
        if targets is not None:
            loss = next_token_loss(logits, targets)
        return logits, loss

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None) -> torch.Tensor:
        """逐个生成 token；上下文超过 block_size 时只保留最后 block_size 个。"""
        return generate_tokens(self, idx, max_new_tokens, temperature, top_k, seed,
                               block_size=self.config.block_size)
