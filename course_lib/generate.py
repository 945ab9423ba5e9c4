"""从语言模型采样（sampling）。所有模型（BigramLM、GPT，以及第 04 章的 Llama）共用这一个函数。

第 09 章会在这里继续讲 top-p、重复惩罚和流式输出。
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits: (B, V) → 下一个 token 的 id，形状 (B, 1)。

    temperature ≤ 0 表示贪心（greedy）：直接取概率最大的 token，结果确定。
    top_k：只在概率最大的 k 个 token 里采样。
    generator：传入 torch.Generator 即可让采样可复现（不影响全局随机状态）。
    """
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k 必须 ≥ 1，收到 {top_k}。")
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, num_samples=1, generator=generator).to(logits.device)


@torch.no_grad()
def generate_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, seed: int | None = None,
                    block_size: int | None = None) -> torch.Tensor:
    """自回归生成：每次把（最后 block_size 个）token 送进模型，取最后一个位置的 logits 采样。

    model(idx) 要返回 (logits, loss) 或 logits；idx: (B, T) → 返回 (B, T + max_new_tokens)。
    """
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    if idx.size(1) == 0:
        raise ValueError("提示（prompt）是空的：至少给一个 token 作为开头。")
    generator = None
    if seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        ctx = idx if block_size is None else idx[:, -block_size:]
        out = model(ctx)
        logits = out[0] if isinstance(out, tuple) else out
        nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return idx
