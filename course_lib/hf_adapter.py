"""课程唯一的 transformers 适配器：把 transformers 的因果语言模型（也可以是 peft 包过的、bitsandbytes 量化过的）
包成 course_lib 模型的接口，让课程的训练、评测和生成原样用在它身上。

- HFCausalLM(hf)(idx, targets) → (logits, loss)，和 course_lib.Llama 一样：targets 已经错开一位
  （不像 HF 的 labels= 会在内部再错开一位），-100 的位置不算损失。Trainer、sft.train_sft、evaluate_loss 都能直接用。
- 生成：HFCausalLM 有 new_cache()，course_lib.generate.decode 用 transformers 自己的 KV 缓存（cache / past_key_values），
  每步只送入一个新 token；采样仍是 course_lib.generate.sample_next，所以参数含义和课程模型完全相同。
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F


class HFCache:
    """transformers 的 KV 缓存（past_key_values），加上 decode 需要的 pos（已缓存的位置数）和 capacity（上限）。"""

    def __init__(self, capacity: int):
        self.past, self.pos, self.capacity = None, 0, capacity


class HFCausalLM(nn.Module):
    """transformers 模型 → course_lib 模型的接口（见本模块开头）。self.hf 是原来的模型。"""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        base = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model   # peft 包过的模型
        params = inspect.signature(base.forward).parameters if isinstance(base, nn.Module) else {}
        if "input_ids" not in params:
            raise TypeError(f"HFCausalLM 包装的是 transformers 的因果语言模型（forward 接受 input_ids），收到 {type(hf_model).__name__}。"
                            "course_lib 自己的 Llama、GPT 本来就是 model(idx, targets) → (logits, loss) 的接口，直接用就行。")
        self.hf = hf_model
        # transformers 5.24 起，KV 缓存的参数名从 past_key_values 改成了 cache（旧名字会警告、5.40 删除）：两种都支持
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def new_cache(self, batch_size: int = 1, capacity: int | None = None) -> HFCache:
        limit = int(getattr(self.hf.config, "max_position_embeddings", None) or 2048)
        return HFCache(min(capacity or limit, limit))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: HFCache | None = None):
        idx = idx.to(self.device)
        if cache is None:
            out = self.hf(input_ids=idx)
        else:
            out = self.hf(input_ids=idx, use_cache=True, **{self._cache_kwarg: cache.past})
            cache.past = getattr(out, "cache", None) or out.past_key_values       # 缓存里多了这几个位置的 k、v
            cache.pos += idx.size(1)
        logits = out.logits.float()                                                # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.to(logits.device).reshape(-1))
        return logits, loss
