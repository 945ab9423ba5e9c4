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


# ---------------------------------------------------------------- FSDP（TrainConfig(parallel="fsdp")）
# DDP 每个进程存一份完整的模型、梯度和优化器状态；FSDP（fully sharded data parallel，这里是 PyTorch 自带的第二版
# fully_shard）把它们切成 N 份，每个进程只长期保存自己那 1/N，算到某一层时才临时把这一层的参数收集（all-gather）完整，
# 反向算完梯度再切开求平均（reduce-scatter）。显存省下来，代价是更多的通信。何时选哪一个见 docs/distributed.md。

def _plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """同结构、没有切分的新模型（在 CPU 上）：FSDP 的检查点借它读写完整的权重。只支持课程的 GPT、Llama。"""
    from .checkpoint import _model_types, model_kind
    kind = model_kind(model)
    if kind is None:
        raise TypeError(f"parallel='fsdp' 只支持课程的 GPT、Llama，收到 {type(model).__name__}：别的模型请用 parallel='ddp'。")
    return _model_types()[kind][0](model.config)


def shard_model(model: torch.nn.Module, device: torch.device, world_size: int) -> None:
    """原地把 model 切分到 world_size 个进程上：每个 Transformer 块单独一组（算到这一块才收集它的参数），其余参数
    （嵌入、最后的归一化、输出层）归到根模块。之后 model 的参数是 DTensor，每个进程只存每个张量的 1/world_size 行。"""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    _plain_model(model)                        # 不认识的模型：先给出中文错误
    mesh = init_device_mesh(device.type, (world_size,))
    blocks = getattr(model, "blocks", None) or getattr(model, "layers")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_model_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """把切分的权重收集成一份完整的模型（CPU 上），只在 rank 0 返回；所有进程都要调用（要一起通信）。"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    model.reshard()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    plain = _plain_model(model)
    plain.load_state_dict(full)
    return plain


def save_sharded_optimizer(model: torch.nn.Module, optimizer, root, step: int):
    """每个进程把自己那份优化器状态写进 root/.tmp_shards_step_XXXXXX（torch.distributed.checkpoint 的格式：
    每个进程一个 .distcp 文件 + 一个 .metadata），返回这个文件夹；write_checkpoint 再把它整个搬进检查点。"""
    import shutil
    from pathlib import Path

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    # 根模块只做过前向、没做反向时（例如刚评估完），它的参数还是收集起来的完整张量，和优化器手里的分片对不上：先切回去
    model.reshard()
    staging = Path(root) / f".tmp_shards_step_{step:06d}"
    if dist.get_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=staging)
    barrier()
    return staging


def load_sharded(model: torch.nn.Module, optimizer, tensors: dict, path) -> None:
    """FSDP 续训：完整的权重（model.safetensors）切分后载入，优化器状态从 path/optimizer 里的分片读回自己那一份。"""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    from .checkpoint import SHARDS, load_unique_state_dict
    plain = _plain_model(model)
    load_unique_state_dict(plain, tensors, f"检查点 {path}")
    set_model_state_dict(model, plain.state_dict(), options=StateDictOptions(full_state_dict=True))
    if not (path / SHARDS).is_dir():
        raise FileNotFoundError(f"检查点 {path} 里没有优化器的分片（{SHARDS}/）：它不是 parallel='fsdp' 训练时保存的。"
                                "请用保存它时的 parallel 设置续训。")
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=path / SHARDS)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


# ---------------------------------------------------------------- 每张卡要多少显存（估算）
ONE_B = dict(vocab_size=32000, max_seq_len=2048, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632)
# ↑ 约 11 亿参数的 Llama（TinyLlama-1.1B 的形状），给「模型放不进一张卡」的情形一个具体的数


def training_memory(cfg, batch_size: int, seq_len: int, world_size: int = 1, parallel: str = "ddp") -> dict:
    """AdamW + bf16 自动混合精度训练一个 Llama 时，每个进程（每张 GPU）大约要多少字节。估算，不是测量：

    - 模型状态：fp32 的权重 4 字节 + 梯度 4 字节 + AdamW 的两个动量 8 字节 = 每个参数 16 字节。
      DDP 每张卡一整份；FSDP 切成 world_size 份，但算到某一单元（一个 Transformer 块，或根模块的嵌入和输出层）时
      要临时收集它完整的权重和梯度：再加上最大那个单元的约 12 字节 / 参数（两个单元的权重——当前的和预取的——加一个单元的梯度）。
    - 激活：Korthikanti 等（2022）的估计，每层每个 token 约 34·dim 字节（bf16；用 SDPA / flash attention，
      不存 T×T 的注意力矩阵），再加 logits：每个 token vocab_size × 6 字节（bf16 的 logits + 算损失用的 fp32）。
    不含 CUDA 上下文、内存碎片和临时缓冲（实际通常再多 10%–30%）。
    """
    from .llama import Llama
    with torch.device("meta"):               # 只看形状，不分配内存：11 亿参数也是一瞬间
        model = Llama(cfg)
    params = sum(p.numel() for p in model.parameters())
    units = [sum(p.numel() for p in block.parameters()) for block in model.layers]
    root = params - sum(units)
    states = 16 * params if parallel == "ddp" else 16 * params / world_size + 12 * max(units + [root])
    tokens = batch_size * seq_len
    activations = cfg.n_layers * tokens * 34 * cfg.dim + tokens * cfg.vocab_size * 6
    return {"params": params, "states": states, "activations": activations, "total": states + activations}


def memory_table() -> str:
    """docs/distributed.md 里的表：第 05 章三档的模型和一个约 11 亿参数的模型，DDP 与 FSDP 每张卡的显存（估算）。
    tests/test_train_full.py 核对文档里的表就是这个函数的输出。"""
    from .llama import LlamaConfig
    from .profiles import CHAPTERS
    rows = []
    for name in ("tiny", "small", "full"):
        p = CHAPTERS["05_pretraining"][name]
        cfg = LlamaConfig(vocab_size=p["vocab_size"], max_seq_len=p["block_size"], dim=p["dim"], n_layers=p["n_layers"],
                          n_heads=p["n_heads"], n_kv_heads=p["n_kv_heads"], tie_weights=p["tie_weights"])
        rows.append((f"第 05 章 {name}", cfg, p["batch_size"], p["block_size"]))
    rows.append(("约 11 亿参数（TinyLlama-1.1B 的形状）", LlamaConfig(**ONE_B), 4, ONE_B["max_seq_len"]))

    def gb(x):
        return f"{x / 2**30:.2f} GB" if x >= 2**30 else f"{x / 2**20:.0f} MB"

    lines = ["| 模型 | 参数 | 每卡批 × 长度 | DDP：模型状态 | FSDP 2 卡：模型状态 | FSDP 8 卡：模型状态 | 激活（每卡） | DDP 合计 | FSDP 8 卡合计 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, cfg, batch, seq in rows:
        ddp = training_memory(cfg, batch, seq)
        f2, f8 = (training_memory(cfg, batch, seq, n, "fsdp") for n in (2, 8))
        lines.append(f"| {name} | {ddp['params'] / 1e6:,.1f} M | {batch} × {seq} | {gb(ddp['states'])} | {gb(f2['states'])} | "
                     f"{gb(f8['states'])} | {gb(ddp['activations'])} | {gb(ddp['total'])} | {gb(f8['total'])} |")
    return "\n".join(lines)
