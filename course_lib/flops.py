"""训练的算力账：每个 token 要多少次浮点运算（FLOPs），以及 GPU 的峰值算力——两者合起来算 MFU
（model FLOPs utilization，模型算力利用率 = 实际每秒做的有用运算 ÷ 硬件峰值）。
"""
from __future__ import annotations

import torch

from .gpt import GPTConfig
from .llama import LlamaConfig

# 各种 GPU 的稠密（dense，不算结构化稀疏）bf16 峰值算力，单位 FLOP/s；T4、V100 不支持 bf16，是 fp16 的数字。
# 按 torch.cuda.get_device_name() 里的子串从上往下匹配，所以更具体的名字要写在前面（"L40S" 在 "L4" 前）。
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("T4", 65e12), ("V100", 125e12),
)


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """这块 GPU 的峰值算力（FLOP/s）。CPU、MPS、表里没有的 GPU → None（不估计 MFU）。

    也可以直接传 GPU 的名字，例如 peak_flops("NVIDIA H100 80GB HBM3")。
    """
    if isinstance(device, str) and device.split(":")[0] not in ("cuda", "cpu", "mps"):
        name = device
    else:
        device = torch.device(device or "cpu")
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float | None:
    """训练时每个 token 的浮点运算数（前向 + 反向），PaLM 论文附录 B 的估计：6·N + 12·L·H·Q·T。

    - 6·N：每个参与矩阵乘法的参数，前向 2 次、反向 4 次运算。只做查表的嵌入不算；
      与 lm_head 共享的词嵌入按 lm_head 的矩阵乘法算一次。
    - 12·L·H·Q·T：注意力里 q·kᵀ 和 权重·v 两个矩阵乘法（L 层、H 个头、每头 Q 维、上下文 T）。
    只认识 GPT 和 Llama 的 config；别的模型返回 None。
    """
    cfg = getattr(model, "config", None)
    if isinstance(cfg, GPTConfig):
        n_layer, n_head, head_dim = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head
    elif isinstance(cfg, LlamaConfig):
        n_layer, n_head, head_dim = cfg.n_layers, cfg.n_heads, cfg.head_dim
    else:
        return None
    lookup_only = ({id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
                   - {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)})
    n_params = sum(p.numel() for p in model.parameters() if id(p) not in lookup_only)
    return 6 * n_params + 12 * n_layer * n_head * head_dim * seq_len
