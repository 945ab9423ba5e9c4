"""模型和配置共用的输入检查：错误的输入在这里变成能照着修的中文错误，而不是 PyTorch 深处的一行英文。"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_INT_KINDS = {1: "正整数", 0: "非负整数", None: "整数"}


def check_int(value, name: str, minimum: int | None = 1, allow_none: bool = False) -> int | None:
    """value 必须是 ≥ minimum 的整数（minimum=None：不限），返回 int(value)。True/False、2.5、"10" 都不算整数，numpy 的整数算。"""
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or (minimum is not None and value < minimum):
        kind = _INT_KINDS.get(minimum, f" ≥ {minimum} 的整数")
        raise ValueError(f"{name} 必须是{kind}{'（或 None）' if allow_none else ''}，收到 {value!r}。")
    return int(value)


def check_ints(obj, names, minimum: int | None = 1) -> None:
    """obj（配置 dataclass）的这些字段必须是整数（见 check_int）；numpy 的整数换成 int，之后才能存进 JSON。"""
    for name in names:
        setattr(obj, name, check_int(getattr(obj, name), f"{type(obj).__name__}.{name}", minimum))


def check_number(value, name: str, low: float = 0.0, *, strict: bool = False, high: float | None = None) -> None:
    """value 必须是有限的实数（True/False、"1e-3"、nan 都不算），≥ low（strict 时 > low），给了 high 时 ≤ high。"""
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and (value > low if strict else value >= low) and (high is None or value <= high)):
        top = f"、不大于 {high:g}" if high is not None else ""
        raise ValueError(f"{name} 必须是{'大于' if strict else '不小于'} {low:g}{top} 的数，收到 {value!r}。")


def check_numbers(obj, names, low: float = 0.0, *, strict: bool = False, high: float | None = None) -> None:
    for name in names:
        check_number(getattr(obj, name), f"{type(obj).__name__}.{name}", low, strict=strict, high=high)


def check_bools(obj, names) -> None:
    """obj 的这些字段必须是 True 或 False（"no" 不算：非空字符串永远为真）。"""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{type(obj).__name__}.{name} 必须是 True 或 False，收到 {value!r}。")
        setattr(obj, name, bool(value))


def check_module(model, who: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} 需要一个 PyTorch 模型（torch.nn.Module，例如 course_lib 的 Llama），收到 {type(model).__name__}。")


def check_float_dtype(dtype, name: str = "dtype") -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{name} 必须是浮点类型，例如 torch.float32、torch.float16、torch.bfloat16（或 None），收到 {dtype!r}。")


def _describe(x) -> str:
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return f"{type(x).__name__}（形状 {tuple(x.shape)}，{x.dtype}）"
    return f"{type(x).__name__} {x!r}"[:80]


def token_ids(ids, what: str = "token id") -> list[int]:
    """一串 token id（list、一维整数张量或 numpy 数组）→ list[int]。字符串、浮点数、多维的给出中文错误。"""
    if torch.is_tensor(ids) or isinstance(ids, np.ndarray):
        floating = ids.is_floating_point() if torch.is_tensor(ids) else not np.issubdtype(ids.dtype, np.integer)
        if ids.ndim <= 1 and not floating:
            return ids.reshape(-1).tolist()
    elif not isinstance(ids, (str, bytes, bytearray)):
        try:
            return [operator.index(i) for i in ids]
        except TypeError:
            pass
    space = " " if what[-1:].isascii() and what[-1:].isalnum() else ""
    raise ValueError(f"{what}{space}应该是整数 id 的列表（或一维整数张量），收到 {_describe(ids)}。"
                     "文字要先用分词器编码：tokenizer.encode(文字)。")


def bad_input(idx) -> ValueError:
    """模型的输入 idx 不是 (B, T) 的整数张量时的中文错误（调用方只在出错时用它）。"""
    return ValueError(f"模型的输入应该是 (B, T) 的整数张量（B 条序列、每条 T 个 token id），收到 {_describe(idx)}。"
                      "一条序列请写成 idx[None]（或 idx.unsqueeze(0)）；文字要先编码：torch.tensor([tokenizer.encode(文字)])。")


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """下一个 token 的交叉熵：logits (B, T, V)，targets (B, T)，-100 的位置不算。targets 不对时给出中文错误（只在出错时检查）。"""
    try:
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
    except (RuntimeError, IndexError, ValueError, AttributeError, TypeError):
        if not torch.is_tensor(targets) or targets.is_floating_point():
            problem = f"应该是整数（torch.long）张量，收到 {_describe(targets)}"
        elif tuple(targets.shape) != tuple(logits.shape[:-1]):
            problem = f"的形状 {tuple(targets.shape)} 应该和输入一样，是 {tuple(logits.shape[:-1])}"
        elif bool(((targets < 0) & (targets != -100)).any() | (targets >= logits.size(-1)).any()):
            problem = f"里有超出词表（vocab_size={logits.size(-1)}）的 id；只有 -100 表示「这个位置不算损失」"
        else:
            raise
        raise ValueError(f"targets {problem}。targets 是每个位置的下一个 token：y = x 往后错一位。") from None


def embed(embedding: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """embedding(idx)，但 token id 超出词表时说清楚是哪个 id、词表多大、通常是什么原因。

    只在出错时才检查（CPU 上 PyTorch 抛 IndexError），正常前向没有任何额外开销。
    """
    try:
        return embedding(idx)
    except (RuntimeError, TypeError):  # 不是整数张量（例如 float，或者是个 list）
        if not torch.is_tensor(idx) or idx.is_floating_point() or idx.dtype == torch.bool:
            raise bad_input(idx) from None
        raise
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
    if vocab_size is not None and len(data):
        unsigned = data.dtype == torch.uint8 if is_tensor else np.issubdtype(data.dtype, np.unsignedinteger)
        low, high = 0 if unsigned else int(data.min()), int(data.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} 里有 token id {low if low < 0 else high}，超出了模型的词表（vocab_size={vocab_size}，"
                             f"id 只能是 0…{vocab_size - 1}）。通常是分词器和模型不配套：请把模型的 vocab_size 设成分词器的 vocab_size。")


def check_windows(data, block_size, batch_size=1, name: str = "data") -> None:
    """取批之前的检查：data 是一维整数 token 序列，block_size、batch_size 是正整数，data 至少截得出一个窗口。"""
    check_tokens(data, name)
    check_int(block_size, "block_size")
    check_int(batch_size, "batch_size")
    if len(data) <= block_size:
        raise ValueError(f"{name} 只有 {len(data)} 个 token，比 block_size={block_size} 还短：截不出一个窗口"
                         f"（需要至少 {block_size + 1} 个）。请换更长的语料，或调小 block_size。")
