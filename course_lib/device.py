"""设备与可复现性：选设备、设随机种子、决定混合精度的数据类型；评估时临时切到 eval 模式（eval_mode）。

整个课程只有这一个设备助手，所有章节和 Trainer 都用它。
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .checks import check_int


def get_device(prefer: str | None = None) -> torch.device:
    """返回要用的设备。

    prefer=None（默认）按 cuda → mps → cpu 自动选择；也可以写 "cuda"、"cuda:1"、"mps"、"cpu"。
    环境变量 COURSE_DEVICE 可以覆盖自动选择。要求的设备不存在时给出中文错误。
    """
    prefer = prefer or os.environ.get("COURSE_DEVICE") or None
    if prefer is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = str(prefer).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "要求使用 CUDA，但这台机器上没有可用的 NVIDIA GPU（torch.cuda.is_available() 为 False）。"
            "请改用 get_device('cpu') 或 get_device()（自动选择），"
            "或者在 Colab 里打开「修改运行时类型 → GPU」。"
        )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("要求使用 MPS（Apple GPU），但这台机器不支持。请改用 get_device() 自动选择。")
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"不认识的设备 {prefer!r}：只能是 'cuda'、'cuda:N'、'mps' 或 'cpu'。")
    return torch.device(prefer)


def seed_everything(seed: int = 1337) -> None:
    """固定 Python、NumPy、PyTorch（含 CUDA）的随机种子，让 CPU 上的结果逐位可复现。"""
    seed = check_int(seed, "seed", None)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """这台设备上混合精度用的数据类型。

    - 支持 bf16 的 CUDA（Ampere 及以后，如 A100/H100/RTX 30xx）→ bfloat16
    - 较老的 CUDA（如 Colab 的 T4）→ float16（需要配合 GradScaler）
    - CPU / MPS → float32（不做混合精度：CPU 上 bf16 往往更慢）
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast(device: torch.device | str):
    """返回混合精度上下文；fp32 时是一个什么都不做的上下文。"""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device | str) -> bool:
    """只有 fp16 需要 GradScaler（bf16 的指数范围和 fp32 一样，不会下溢）。"""
    return autocast_dtype(device) == torch.float16


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """with eval_mode(model): 里模型处于 eval 模式（dropout 关闭），出来后恢复原来的 train / eval 模式。

    评估和生成都要这样做：训练到一半评估一次，评估完必须回到训练模式，否则之后的训练悄悄地没有 dropout。
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
