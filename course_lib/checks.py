"""模型和配置共用的输入检查：错误的输入在这里变成能照着修的中文错误，而不是 PyTorch 深处的一行英文。"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def check_positive_ints(obj, names) -> None:
    """obj 的这些字段必须是正整数（True/False 不算整数，2.5 和 "10" 也不算）。"""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} 必须是正整数，收到 {value!r}。")


def embed(embedding: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """embedding(idx)，但 token id 超出词表时说清楚是哪个 id、词表多大、通常是什么原因。

    只在出错时才检查（CPU 上 PyTorch 抛 IndexError），正常前向没有任何额外开销。
    """
    try:
        return embedding(idx)
    except IndexError:
        bad = idx[(idx < 0) | (idx >= embedding.num_embeddings)]
        raise ValueError(f"token id {int(bad[0])} 超出了词表（模型的 vocab_size={embedding.num_embeddings}，"
                         f"id 只能是 0…{embedding.num_embeddings - 1}）。通常是分词器和模型不配套："
                         "请用训练这个模型时的那个分词器，或把模型的 vocab_size 设成分词器的 vocab_size。") from None


def check_shapes(state: dict, tensors: dict, weights: str, config: str, fix: str) -> None:
    """权重文件里的张量形状必须和按 config 建出来的模型（state = model.state_dict()）一致，否则说清楚哪几个不同。"""
    wrong = [(n, tuple(t.shape), tuple(state[n].shape)) for n, t in tensors.items()
             if n in state and tuple(t.shape) != tuple(state[n].shape)]
    if wrong:
        detail = "；".join(f"{n} 在{weights}里是 {a}，按 {config} 应该是 {b}" for n, a, b in wrong[:3])
        raise ValueError(f"权重与 {config} 描述的结构不符（{len(wrong)} 个张量的形状不同）：{detail}。{fix}")


def check_tokens(data, name: str = "数据", vocab_size: int | None = None) -> None:
    """训练数据必须是一维的整数 token 序列（torch 张量或 numpy 数组 / .bin 的 memmap），id 在词表范围内。"""
    is_tensor, is_array = torch.is_tensor(data), isinstance(data, np.ndarray)
    if not (is_tensor or is_array) or data.ndim != 1 or (
            data.dtype.is_floating_point if is_tensor else not np.issubdtype(data.dtype, np.integer)):
        what = f"{type(data).__name__}" + (f"（形状 {tuple(data.shape)}，{data.dtype}）" if is_tensor or is_array else "")
        raise ValueError(f"{name} 应该是一维的整数 token 序列（torch 张量或 numpy 数组），收到 {what}。"
                         "文字要先编码：torch.tensor(tokenizer.encode(text))；.bin 文件用 token_data.load_token_bin 读。")
    if vocab_size is not None and len(data) and int(data.max()) >= vocab_size:
        raise ValueError(f"{name} 里有 token id {int(data.max())}，超出了模型的词表（vocab_size={vocab_size}）。"
                         "通常是分词器和模型不配套：请把模型的 vocab_size 设成分词器的 vocab_size。")
