"""多卡训练（torchrun + DDP）要用的几个小工具：进程编号、建立 / 关闭进程组、跨进程求平均和收集。

torchrun 为每个进程设置环境变量 RANK、LOCAL_RANK、WORLD_SIZE；没有用 torchrun 启动时，这里的函数都退化成单进程的样子
（rank 0、1 个进程、求平均就是它自己），所以 Trainer 不必区分单卡和多卡。
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .device import get_device


def dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size)：torchrun 通过环境变量 RANK、LOCAL_RANK、WORLD_SIZE 告诉每个进程。

    没有用 torchrun 启动时是 (0, 0, 1)。rank 是全局编号（多机时跨机器），local_rank 是本机上的编号（= 用哪块 GPU）。
    """
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def setup_distributed(device: str | None = None) -> torch.device:
    """返回本进程用的设备；用 torchrun 启动了多个进程时，同时建立进程组（只建一次）。

    CUDA：每个进程用第 local_rank 块 GPU，通信后端是 nccl；CPU：后端是 gloo（课程的测试就这样在 CPU 上跑两个进程）。
    """
    rank, local_rank, world_size = dist_info()
    device = get_device(device)
    if world_size == 1:
        return device
    if not dist.is_available():
        raise RuntimeError("这个 PyTorch 没有编译 torch.distributed，无法多进程训练。请去掉 torchrun，用 python 单进程运行。")
    if device.type == "mps":
        raise RuntimeError("MPS（Apple GPU）不支持多进程 DDP 训练。请去掉 torchrun，用 python 单进程运行。")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank}，但这台机器只有 {torch.cuda.device_count()} 块 GPU。"
                               "请把 torchrun 的 --nproc_per_node 改成不超过 GPU 的数量。")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return device


def cleanup_distributed() -> None:
    """训练结束时调用：关闭进程组（没有建立过就什么都不做）。

    先 barrier() 等所有进程都走到这里再关闭。不等的话，rank 1 可能在 rank 0 还在保存检查点时就
    拆掉了 gloo 的通信线程，进程以 SIGABRT（"terminate called without an active exception"）退出。
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """是否在多进程训练（进程组已建立，且不止一个进程）。"""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(device: torch.device) -> torch.device:
    """集合通信用的设备：nccl 只能传 GPU 上的张量，gloo 用 CPU 的。"""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(value: torch.Tensor) -> float:
    """一个标量在所有进程上的平均（单进程时就是它自己）。gloo 不一定支持 AVG，所以先求和再除。"""
    if not is_distributed():
        return value.item()
    value = value.detach().float().reshape(1).to(_comm_device(value.device))
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value.item() / dist.get_world_size()


def gather(t: torch.Tensor | None, device: torch.device) -> list:
    """把每个进程的同形状张量收集成列表（第 i 个来自 rank i）；单进程时是 [t]。"""
    if t is None or not is_distributed():
        return [t]
    t = t.to(_comm_device(device))
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
