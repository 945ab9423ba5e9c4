"""损失函数与评估损失：训练和报告数字用的是同一个损失函数。

- lm_loss(model, batch)：语言模型的默认损失（下一个 token 的交叉熵）；Trainer 的 loss_fn 默认就是它。
- batch_losses：在 eval 模式、不求梯度地算每个批次的损失——课程里所有「评估损失」（Trainer.estimate_loss、
  evaluate_loss、第 06 章的 sft_loss）都走这一个循环；weighted_mean 按每批的大小平均。
- evaluate_loss：整份数据上确定性的平均损失（报告最终数字用）。
"""
from __future__ import annotations

import numpy as np
import torch

from .checks import check_int, check_module, check_tokens
from .device import autocast, eval_mode


def lm_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """默认的损失：语言模型的下一个 token 交叉熵。batch = (x, y)，model(x, y) 返回 (logits, loss)。"""
    x, y = batch
    return model(x, y)[1]


@torch.no_grad()
def batch_losses(model: torch.nn.Module, batches, loss_fn=lm_loss) -> list[torch.Tensor]:
    """在 eval 模式、不求梯度地算出每个批次的损失（0 维张量的列表）。课程里所有「评估损失」都走这里。"""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for batch in batches:
            with autocast(device):
                out.append(loss_fn(model, batch).detach())
    return out


def weighted_mean(losses: list[torch.Tensor], weights: list[int]) -> float:
    """按权重（例如每批的样本数）平均各批的损失。"""
    return sum(loss.item() * w for loss, w in zip(losses, weights)) / sum(weights)


def evaluate_loss(model: torch.nn.Module, data, block_size: int, batch_size: int = 16,
                  device: torch.device | str | None = None, max_windows: int | None = None) -> float:
    """整份数据上的平均交叉熵（nats/token）：按不重叠的窗口从头切到尾，没有随机性，每次结果相同。

    与 Trainer.estimate_loss（随机抽若干批，训练中快速估计）不同，这是报告最终数字用的。
    data 可以是张量或 .bin 的 memmap；max_windows 限制最多评估多少个窗口（None = 全部）。
    """
    check_module(model, "evaluate_loss")
    check_tokens(data, "evaluate_loss 的 data")
    check_int(block_size, "block_size")
    check_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_windows = (len(data) - 1) // block_size
    if check_int(max_windows, "max_windows", allow_none=True) is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows <= 0:
        raise ValueError(f"数据只有 {len(data)} 个 token，不够一个长为 {block_size} 的窗口。")

    def windows():
        for start in range(0, n_windows, batch_size):
            idx = (torch.arange(start, min(start + batch_size, n_windows))[:, None] * block_size
                   + torch.arange(block_size + 1))
            chunk = torch.from_numpy(np.asarray(data[idx.numpy()], dtype=np.int64)) if isinstance(data, np.ndarray) \
                else data[idx].long()
            chunk = chunk.to(device)
            yield chunk[:, :-1], chunk[:, 1:]

    sizes = [min(batch_size, n_windows - start) for start in range(0, n_windows, batch_size)]
    return weighted_mean(batch_losses(model, windows()), sizes)
