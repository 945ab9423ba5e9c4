"""训练器（Trainer）。第 03 章的版本：随机窗口取批、AdamW、预热 + 余弦学习率、梯度裁剪、
混合精度（CUDA 上自动 bf16/fp16）、定期估计 train/val 损失、进度条，返回可以直接画图的历史。

第 05 章的扩展（全部可选，默认值下行为和第 03 章完全一样）：
- 梯度累积（grad_accum_steps）：显存放不下大批次时，把一步拆成几个小批次，梯度相加后再更新；
- 吞吐量与 MFU：每秒处理多少 token，以及用到了 GPU 峰值算力的百分之几；
- torch.compile（compile=True）；
- 检查点与**精确续训**：checkpoint_dir / checkpoint_interval / resume。中断后续训，
  CPU 上的最终权重与一口气训完逐位相同；
- 多卡（DDP）：用 torchrun 启动时自动启用，单卡、多卡、多机是同一个入口；
- 命令行：python -m course_lib.train --profile tiny --out 目录（见文件末尾的 main）。

同一个 Trainer 在 CPU、MPS、CUDA 上都能跑；CPU 上固定种子时结果逐位可复现。
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import WEIGHTS, load_model, load_unique_state_dict, model_kind, save_model, unique_state_dict
from .data import corpus_documents
from .device import autocast, get_device, needs_grad_scaler
from .files import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text
from .gpt import GPTConfig
from .llama import Llama, LlamaConfig
from .profiles import active_profile, chapter_config
from .report import progress_bar
from .token_data import load_token_bin, prepare_pretraining_data
from .tokenizer import BPETokenizer

# `python -m course_lib.train` 时，course_lib/__init__.py 已经导入过本模块，runpy 会警告
# 「found in sys.modules ... unpredictable behaviour」。文件末尾的入口只调用已导入模块里的 main，
# 不会出现两份类，所以只忽略这一条警告。
warnings.filterwarnings("ignore", message=r"'course_lib\.train' found in sys\.modules", category=RuntimeWarning)


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32          # 每个进程、每个小批次（micro-batch）的序列数
    block_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1     # 余弦退火的终点：lr × min_lr_ratio
    warmup_steps: int = 0
    schedule: str = "cosine"      # "cosine" 或 "constant"
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_interval: int = 100      # 每隔多少步评估一次；0 = 不评估（测速时用）
    eval_iters: int = 20
    seed: int = 1337
    device: str | None = None     # None → get_device() 自动选择
    progress: bool = True
    log: bool = True              # 每次评估打印一行摘要
    # ---- 第 05 章
    grad_accum_steps: int = 1     # 梯度累积：每步 = grad_accum_steps 个小批次；全局批 = batch_size × 累积 × 进程数
    compile: bool = False         # True → torch.compile(model)（需要 C 编译器；第一步会慢一些）
    checkpoint_dir: str | None = None  # 检查点放在这里（每个检查点是其中的 step_XXXXXX 文件夹，只保留最新的）
    checkpoint_interval: int = 0  # 每隔多少步存一次；0 = 只在 fit() 结束时存
    resume: str | None = None     # 续训：检查点文件夹的路径；"auto" = checkpoint_dir 里有检查点就续训，没有就从头训练

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "block_size", "eval_iters", "grad_accum_steps"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"TrainConfig.{name} 必须是正整数，收到 {getattr(self, name)!r}。")
        if self.eval_interval < 0:
            raise ValueError(f"eval_interval 不能是负数（0 表示不评估），收到 {self.eval_interval}。")
        if self.lr <= 0:
            raise ValueError(f"学习率 lr 必须 > 0，收到 {self.lr}。")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule 只能是 'cosine' 或 'constant'，收到 {self.schedule!r}。")
        if self.checkpoint_interval < 0:
            raise ValueError(f"checkpoint_interval 不能是负数（0 表示只在结束时保存），收到 {self.checkpoint_interval}。")
        if self.checkpoint_interval and not self.checkpoint_dir:
            raise ValueError("设置了 checkpoint_interval，却没有 checkpoint_dir：请同时给出检查点要存到哪个文件夹。")
        if self.resume == "auto" and not self.checkpoint_dir:
            raise ValueError("resume='auto' 表示「从 checkpoint_dir 里的检查点续训」，请同时设置 checkpoint_dir。")


# 这些设置一变，续训就不再等于一口气训完（数据顺序、梯度、学习率都会不同），续训时必须和检查点里的一致。
# max_steps 例外：调大它就是「再多训一会儿」（余弦学习率从续训处起按新的总步数计算，会打印提示）。
EXACT_FIELDS = ("batch_size", "block_size", "grad_accum_steps", "lr", "min_lr_ratio", "warmup_steps", "schedule",
                "weight_decay", "betas", "grad_clip", "seed")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """第 step 步的学习率：先线性预热 warmup_steps 步，再余弦下降到 lr × min_lr_ratio。"""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def get_batch(data, block_size: int, batch_size: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1):
    """从一长串 token 里随机截取 batch_size 个长为 block_size 的窗口。

    x = data[i : i+block_size]，y = data[i+1 : i+block_size+1]（y 是 x 往后错一位：每个位置的「下一个字」）。
    data 可以是 torch 张量，也可以是 numpy 数组 / np.memmap（第 05 章的 uint16 .bin 文件）。

    多卡时：每个进程用同一个随机数生成器抽出整个全局批（batch_size × world_size 个起点），
    再取属于自己的第 rank 段。所以 N 个进程合起来看到的数据，和 1 个进程用 N 倍批大小看到的完全一样。
    """
    n = len(data)
    if n <= block_size:
        raise ValueError(f"数据只有 {n} 个 token，不够截取长为 block_size={block_size} 的窗口（需要至少 {block_size + 1} 个）。"
                         "请换更长的语料，或调小 block_size。")
    starts = torch.randint(n - block_size, (batch_size * world_size,), generator=generator)
    starts = starts[rank * batch_size:(rank + 1) * batch_size]
    index = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    if isinstance(data, np.ndarray):
        chunk = torch.from_numpy(data[index.numpy()].astype(np.int64))
    else:
        chunk = data[index].long()
    x, y = chunk[:, :-1], chunk[:, 1:]
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW，两组参数：矩阵（≥2 维）做权重衰减，偏置和归一化层的参数不做。CUDA 上用 fused 实现。"""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **extra)


# ---------------------------------------------------------------- 吞吐量与 MFU
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


# ---------------------------------------------------------------- 多卡（torchrun + DDP）
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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(device: torch.device) -> torch.device:
    """集合通信用的设备：nccl 只能传 GPU 上的张量，gloo 用 CPU 的。"""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _mean_over_ranks(value: torch.Tensor) -> float:
    """一个标量在所有进程上的平均（单进程时就是它自己）。gloo 不一定支持 AVG，所以先求和再除。"""
    if not _distributed():
        return value.item()
    value = value.detach().float().reshape(1).to(_comm_device(value.device))
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value.item() / dist.get_world_size()


def _gather(t: torch.Tensor | None, device: torch.device) -> list:
    """把每个进程的同形状张量收集成列表（第 i 个来自 rank i）；单进程时是 [t]。"""
    if t is None or not _distributed():
        return [t]
    t = t.to(_comm_device(device))
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def _barrier() -> None:
    if _distributed():
        dist.barrier()


# ---------------------------------------------------------------- 训练记录
@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, data, block_size: int, batch_size: int = 16,
                  device: torch.device | str | None = None, max_windows: int | None = None) -> float:
    """整份数据上的平均交叉熵（nats/token）：按不重叠的窗口从头切到尾，没有随机性，每次结果相同。

    与 Trainer.estimate_loss（随机抽若干批，训练中快速估计）不同，这是报告最终数字用的。
    data 可以是张量或 .bin 的 memmap；max_windows 限制最多评估多少个窗口（None = 全部）。
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_windows = (len(data) - 1) // block_size
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows <= 0:
        raise ValueError(f"数据只有 {len(data)} 个 token，不够一个长为 {block_size} 的窗口。")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, n_windows, batch_size):
        idx = torch.arange(start, min(start + batch_size, n_windows))[:, None] * block_size + torch.arange(block_size + 1)
        chunk = torch.from_numpy(np.asarray(data[idx.numpy()], dtype=np.int64)) if isinstance(data, np.ndarray) \
            else data[idx].long()
        chunk = chunk.to(device)
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        total += loss.item() * chunk.shape[0]
        count += chunk.shape[0]
    model.train(was_training)
    return total / count


@dataclass
class History:
    """训练记录：每步的损失，以及每次评估时的 train/val 损失。"""
    step_loss: list = field(default_factory=list)   # 每一步的训练损失（有噪声；多卡时是所有进程的平均）
    eval_step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)  # 评估时在 eval_iters 个批次上的平均
    val_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    tokens_per_sec: float = 0.0   # 最近一次 fit() 的吞吐量：所有进程合计，只算训练步的时间（不含评估和存检查点）
    seconds: float = 0.0
    mfu: float | None = None      # 模型算力利用率（0–1）；CPU 或不认识的 GPU 上是 None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------- 检查点
STATE_FILE = "trainer_state.pt"
STATE_FORMAT, STATE_VERSION = "course_lib.trainer_state", 1


class TrainingFinishedError(ValueError):
    """要续训的检查点已经训练到 max_steps。"""


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """folder 本身是检查点就返回它；是 checkpoint_dir 就返回其中步数最大的 step_XXXXXX；都没有返回 None。"""
    folder = Path(folder)
    if (folder / STATE_FILE).exists():
        return folder
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("step_*") if p.name[5:].isdigit() and (p / STATE_FILE).exists()]
    return max(found, key=lambda p: int(p.name[5:]), default=None)


def _model_fingerprint(model: torch.nn.Module) -> dict:
    """模型的「身份」：config（GPT、Llama 有）和每个张量的形状。续训时必须完全一致。"""
    config = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else None
    return {"config": config, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def _describe_diff(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "；".join(f"{k}: 检查点里是 {old.get(k)!r}，现在是 {new.get(k)!r}" for k in keys[:6])


def _read_state(path: Path) -> dict:
    """读取 trainer_state.pt：weights_only=True，只接受张量、数字、字符串、列表、字典，不执行任何代码。"""
    try:
        with open(path / STATE_FILE, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} 里没有 {STATE_FILE}，不是 Trainer 保存的检查点文件夹。") from None
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise ValueError(f"{path / STATE_FILE} 里有张量、数字、字符串、列表、字典以外的对象，为了安全不加载"
                             "（它不是 Trainer.save_checkpoint 写的）。请从 Trainer 保存的检查点续训，或从头训练。") from None
        raise ValueError(f"{path / STATE_FILE} 损坏或不完整，无法读取（{type(e).__name__}）。"
                         "请删除这个检查点文件夹，从更早的检查点续训，或从头训练。") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path / STATE_FILE} 不是第 {STATE_VERSION} 版的 Trainer 检查点。请从头训练，或换用保存它的 course_lib 版本。")
    return state


def _read_weights(path: Path, sha256: str) -> dict:
    from safetensors.torch import load as st_load
    try:
        data = (path / WEIGHTS).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"检查点 {path} 缺少权重文件 {WEIGHTS}：文件夹不完整。请从更早的检查点续训，或从头训练。") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path / WEIGHTS} 的 sha256 与 {STATE_FILE} 里记录的不一致：权重文件损坏、被截断或被替换了。"
                         "请删除这个检查点文件夹，从更早的检查点续训，或从头训练。")
    return st_load(data)


# ---------------------------------------------------------------- 训练器
class Trainer:
    """model(x, y) 必须返回 (logits, loss)。train_data / val_data 是一维 token 序列。

    用 torchrun 启动多个进程时自动用 DDP：每个进程训练全局批里属于自己的一段，梯度在所有进程间求平均；
    只有 rank 0 打印和保存检查点。self.model 始终是原始模型（没有被 DDP / torch.compile 包装）。
    """

    def __init__(self, model: torch.nn.Module, train_data, val_data=None, config: TrainConfig | None = None):
        self.cfg = config or TrainConfig()
        self.rank, _, self.world_size = dist_info()
        self.device = setup_distributed(self.cfg.device)
        self.is_main = self.rank == 0
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            if data is not None and len(data) <= self.cfg.block_size:
                raise ValueError(f"{name} 只有 {len(data)} 个 token，比 block_size={self.cfg.block_size} 还短。"
                                 "请换更长的语料，或调小 block_size。")
        self.model = model.to(self.device)
        self.train_data, self.val_data = train_data, val_data
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device) else None
        self.step = 0
        self.history = History()
        self._batch_gen = torch.Generator().manual_seed(self.cfg.seed)
        self._saved_step = None
        self._flops_per_token = flops_per_token(self.model, self.cfg.block_size)
        self._peak_flops = peak_flops(self.device)
        # 前向、反向走 train_model：可能被 torch.compile 和 DDP 包了两层，但参数就是 self.model 的参数
        self.train_model = torch.compile(self.model) if self.cfg.compile else self.model
        if self.world_size > 1:
            torch.manual_seed(self.cfg.seed + self.rank)  # 各进程的 dropout 掩码不同（否则每张卡丢掉同样的位置）
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.resume == "auto":
            if latest_checkpoint(self.cfg.checkpoint_dir) is not None:
                self.resume(self.cfg.checkpoint_dir)
        elif self.cfg.resume:
            self.resume(self.cfg.resume)

    def _print(self, message: str) -> None:
        if self.is_main and self.cfg.log:
            tqdm.write(message)

    # ------------------------------------------------------------ 评估
    @torch.no_grad()
    def estimate_loss(self) -> dict:
        """在固定的 eval_iters 个随机批次上求平均损失（每次评估用同一批窗口，曲线更平滑）。多卡时再对所有进程求平均。"""
        was_training = self.model.training
        self.model.eval()
        out = {}
        for split, data in (("train", self.train_data), ("val", self.val_data)):
            if data is None:
                continue
            gen = torch.Generator().manual_seed(self.cfg.seed + 1)
            losses = torch.zeros(self.cfg.eval_iters, device=self.device)
            for i in range(self.cfg.eval_iters):
                x, y = get_batch(data, self.cfg.block_size, self.cfg.batch_size, gen, self.device,
                                 rank=self.rank, world_size=self.world_size)
                with autocast(self.device):
                    _, loss = self.model(x, y)
                losses[i] = loss
            out[split] = _mean_over_ranks(losses.mean())
        self.model.train(was_training)
        return out

    def _evaluate_and_log(self, tokens_per_sec: float | None = None) -> None:
        losses = self.estimate_loss()
        h = self.history
        h.eval_step.append(self.step)
        h.train_loss.append(losses["train"])
        h.val_loss.append(losses.get("val", float("nan")))
        val = f" | val {losses['val']:.4f}" if "val" in losses else ""
        speed = ""
        if tokens_per_sec:
            mfu = self.mfu(tokens_per_sec)
            speed = f" | {tokens_per_sec:,.0f} tok/s" + (f" | MFU {mfu:.1%}" if mfu is not None else "")
        self._print(f"step {self.step:5d} | train {losses['train']:.4f}{val}{speed}")

    def mfu(self, tokens_per_sec: float) -> float | None:
        """模型算力利用率：实际每秒做的浮点运算 ÷（每块 GPU 的峰值 × 进程数）。CPU 或不认识的 GPU 上返回 None。"""
        if self._flops_per_token is None or self._peak_flops is None:
            return None
        return tokens_per_sec * self._flops_per_token / (self._peak_flops * self.world_size)

    # ------------------------------------------------------------ 训练
    def train_step(self) -> float:
        """一次参数更新：grad_accum_steps 个小批次的梯度相加（每个损失先除以累积数），再裁剪、更新。"""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum_steps):
            x, y = get_batch(self.train_data, cfg.block_size, cfg.batch_size, self._batch_gen, self.device,
                             rank=self.rank, world_size=self.world_size)
            # DDP 在每次 backward 时把梯度在进程间求平均；累积的前几个小批次不必通信，最后一个再一起同步
            last = micro == cfg.grad_accum_steps - 1
            sync = self.train_model.no_sync() if self.world_size > 1 and not last else contextlib.nullcontext()
            with sync:
                with autocast(self.device):
                    _, loss = self.train_model(x, y)
                loss = loss / cfg.grad_accum_steps
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.history.lr.append(lr)
        return _mean_over_ranks(total)

    def fit(self, stop_at: int | None = None) -> History:
        """训练到 max_steps，返回 History。可以多次调用：会从上次停下的 step 继续。

        stop_at：这次只训练到第 stop_at 步就返回（学习率仍按 max_steps 计算），之后再调用 fit() 接着训。
        设置了 checkpoint_dir 时，每 checkpoint_interval 步、以及每次返回前都保存检查点。
        """
        cfg = self.cfg
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        self.model.train()
        if self.step == 0 and cfg.eval_interval:
            self._evaluate_and_log()
        tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum_steps * self.world_size
        t_start, train_seconds, n_steps = time.perf_counter(), 0.0, 0
        window_seconds, window_steps = 0.0, 0  # 两次评估之间的训练时间和步数，用来算这一段的吞吐量
        bar = progress_bar(total=cfg.max_steps, initial=self.step, desc="训练", enabled=cfg.progress and self.is_main)
        while self.step < end:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            train_seconds, n_steps = train_seconds + dt, n_steps + 1
            window_seconds, window_steps = window_seconds + dt, window_steps + 1
            self.history.step_loss.append(loss)
            bar.update(1)
            if self.step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
            if cfg.eval_interval and (self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps):
                self._evaluate_and_log(window_steps * tokens_per_step / window_seconds if window_seconds > 0 else None)
                window_seconds, window_steps = 0.0, 0
            if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                self.save_checkpoint()
        bar.close()
        h = self.history
        h.seconds += time.perf_counter() - t_start
        if n_steps:
            h.tokens_per_sec = n_steps * tokens_per_step / train_seconds if train_seconds > 0 else 0.0
            h.mfu = self.mfu(h.tokens_per_sec)
        if cfg.checkpoint_dir and self._saved_step != self.step:
            self.save_checkpoint()
        return h

    # ------------------------------------------------------------ 检查点与精确续训
    def _train_fingerprint(self) -> dict:
        fp = {name: getattr(self.cfg, name) for name in EXACT_FIELDS}
        fp["betas"] = [float(b) for b in fp["betas"]]
        fp["world_size"] = self.world_size
        fp["train_tokens"] = len(self.train_data)
        return fp

    def save_checkpoint(self, folder: str | os.PathLike | None = None) -> Path:
        """把续训需要的一切存进 folder/step_XXXXXX（folder 默认是 cfg.checkpoint_dir），返回这个文件夹。

        文件夹里：model.safetensors + config.json（和 save_model 相同，可以直接 load_model），
        trainer_state.pt（优化器、GradScaler、步数、取批的随机数状态、各进程的 torch/cuda 随机数状态、
        History，以及训练设置和模型结构的「指纹」）。先写进临时文件夹，写完再改名，所以
        step_XXXXXX 要么完整、要么不存在；新检查点就位后才删掉旧的。
        多卡时每个进程都要调用（要收集各进程的随机数状态），只有 rank 0 写文件。
        """
        if not (folder or self.cfg.checkpoint_dir):
            raise ValueError("不知道把检查点存到哪里：请设置 TrainConfig(checkpoint_dir=...) 或传入 folder。")
        root = Path(folder or self.cfg.checkpoint_dir)
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        torch_rng, cuda_rngs = _gather(torch.get_rng_state(), self.device), _gather(cuda_rng, self.device)
        target = root / f"step_{self.step:06d}"
        if self.is_main:
            tmp = root / f".tmp_{target.name}_{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if model_kind(self.model) is not None:
                save_model(self.model, tmp, extra={"step": self.step})
            else:  # 课程以外的模型：只存权重（共享的权重同样只存一份）
                from safetensors.torch import save as st_save
                atomic_write_bytes(tmp / WEIGHTS, st_save(unique_state_dict(self.model)))
            state = {
                "format": STATE_FORMAT, "version": STATE_VERSION, "step": self.step, "max_steps": self.cfg.max_steps,
                "weights_sha256": hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "batch_rng": self._batch_gen.get_state(),
                "torch_rng": torch_rng, "cuda_rng": cuda_rngs if cuda_rng is not None else None,
                "history": self.history.as_dict(),
                "train_config": self._train_fingerprint(), "model": _model_fingerprint(self.model),
                "torch_version": str(torch.__version__),
            }
            with atomic_open(tmp / STATE_FILE) as f:  # 最后写：有 trainer_state.pt 的文件夹一定是完整的
                torch.save(state, f)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            for old in root.iterdir():  # 新的已经就位：删掉更早的检查点和崩溃留下的临时文件夹
                if old != target and old.is_dir() and (old.name.startswith(".tmp_step_") or
                                                       (old.name.startswith("step_") and old.name[5:].isdigit())):
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()
        self._saved_step = self.step
        return target

    def resume(self, folder: str | os.PathLike) -> "Trainer":
        """从检查点恢复全部训练状态，之后 fit() 的结果与没有中断时逐位相同（CPU 上；GPU 上非常接近）。

        folder 可以是某个 step_XXXXXX 文件夹，也可以是 checkpoint_dir（取其中最新的）。
        多卡时每个进程都要调用。返回 self，可以写 Trainer(...).resume(folder).fit()。
        """
        path = latest_checkpoint(folder)
        if path is None:
            raise FileNotFoundError(f"{folder} 里没有检查点（找不到 {STATE_FILE}，也没有 step_XXXXXX 文件夹）。"
                                    "请检查路径；想从头训练就不要设置 resume。")
        state = _read_state(path)
        saved = state["model"]
        current = _model_fingerprint(self.model)
        if saved["config"] != current["config"] or saved["shapes"] != current["shapes"]:
            diff = (_describe_diff(saved["config"], current["config"]) if saved["config"] and current["config"]
                    else _describe_diff(saved["shapes"], current["shapes"]))
            raise ValueError(f"检查点 {path} 来自另一个模型配置（{diff}）。请用和检查点相同的模型配置，"
                             "或者换一个新的 checkpoint_dir 从头训练。")
        saved_cfg, current_cfg = state["train_config"], self._train_fingerprint()
        if saved_cfg != current_cfg:
            raise ValueError(f"这些训练设置和检查点 {path} 里的不一样，续训就不再等于一口气训完："
                             f"{_describe_diff(saved_cfg, current_cfg)}。请改回检查点里的值，"
                             "或者换一个新的 checkpoint_dir 从头训练。")
        if state["step"] >= self.cfg.max_steps:
            raise TrainingFinishedError(
                f"检查点 {path} 已经训练完了：第 {state['step']} 步，max_steps={self.cfg.max_steps}。"
                f"要接着多训一些，请调大 max_steps（例如 max_steps={state['step'] * 2}，命令行里写 --max_steps {state['step'] * 2}）。")
        if state["max_steps"] != self.cfg.max_steps:
            self._print(f"提示：max_steps 从 {state['max_steps']} 改成了 {self.cfg.max_steps}，"
                        "余弦学习率从这里起按新的总步数计算（结果不再与一口气训练逐位相同，这是预期的）。")
        load_unique_state_dict(self.model, _read_weights(path, state["weights_sha256"]), f"检查点 {path / WEIGHTS}")
        flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, keep in zip(self.optimizer.param_groups, flags):
            group.update(keep)  # fused 等选项取决于现在的设备，不沿用检查点里的（GPU 上存的检查点也能在 CPU 上续训）
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self._batch_gen.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"][self.rank])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.rank], self.device)
        known = {f.name for f in dataclasses.fields(History)}
        self.history = History(**{k: v for k, v in state["history"].items() if k in known})
        self.step = self._saved_step = state["step"]
        self._print(f"从检查点 {path} 续训：第 {self.step} 步，目标 {self.cfg.max_steps} 步。")
        return self


# ---------------------------------------------------------------- 命令行：预训练一个 Llama
CHAPTER = "05_pretraining"


def _parse_value(key: str, text: str, default):
    """把命令行里的字符串按配置里默认值的类型转换；默认值是 None 时依次试 int、float、字符串。"""
    if text.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                return kind(text)
        return text
    except ValueError:
        raise ValueError(f"--{key} 的值 {text!r} 不是 {type(default).__name__}（默认值是 {default!r}）。") from None


def _parse_args(argv: list[str]) -> tuple[str | None, str, dict]:
    """--profile P --out DIR，其余 --键 值 都是对 CHAPTERS['05_pretraining'] 的覆盖。"""
    options, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"看不懂参数 {arg!r}：参数的写法是 --键 值，例如 --max_steps 200。")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ValueError(f"--{key} 后面缺少值，例如 --{key} 100。")
            value, i = argv[i + 1], i + 1
        options[key.replace("-", "_")] = value
        i += 1
    if "out" not in options:
        raise ValueError("请用 --out 目录 指定输出位置，例如：python -m course_lib.train --profile tiny --out runs/pretrain_tiny")
    profile, out = options.pop("profile", None), options.pop("out")
    defaults = chapter_config(CHAPTER, profile)  # 不认识的 profile → 中文错误
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"不认识的参数 {', '.join('--' + k for k in unknown)}。可以覆盖的键：{', '.join(sorted(defaults))}"
                         "（另有 --profile、--out）。")
    overrides = {k: _parse_value(k, v, defaults[k]) for k, v in options.items()}
    return profile, out, overrides


def _load_or_train_tokenizer(folder: Path, corpus: str, vocab_size: int, max_chars: int | None, say):
    if (folder / BPETokenizer.MODEL_FILE).exists():
        tok = BPETokenizer.load(folder)
        if tok.vocab_size != vocab_size:
            raise ValueError(f"{folder} 里已有词表大小 {tok.vocab_size} 的分词器，但配置要求 vocab_size={vocab_size}。"
                             f"请换一个 --out 目录，或删除 {folder} 让它重新训练。")
        say(f"分词器：读取 {folder}（词表 {tok.vocab_size}）")
        return tok
    docs = corpus_documents(corpus, "train")
    total = sum(len(d) for d in docs)
    if max_chars and total > max_chars:  # 均匀地隔几篇取一篇，而不是只取开头（mix 语料的开头全是新闻）
        docs = docs[::math.ceil(total / max_chars)]
    say(f"分词器：在 {corpus} 语料的 {sum(len(d) for d in docs):,} 个字符上训练 BPE（词表 {vocab_size}）……")
    return BPETokenizer.train(docs, folder, vocab_size=vocab_size)


def _append_jsonl(path: Path, record: dict) -> None:
    """在 JSON Lines 文件末尾追加一行（整个文件原子重写：日志很小）。"""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + json.dumps(record, ensure_ascii=False) + "\n")


def pretrain(p: dict, out: str | os.PathLike, profile: str = "custom", overrides: dict | None = None,
             title: str = "第 05 章预训练") -> Path | None:
    """按配置 p（CHAPTERS['05_pretraining'] 那样的 dict）预训练一个 Llama，输出写到 out（见 main 的说明）。

    在 torchrun 下每个进程都调用它；返回 out/"model"（rank 0），其他进程返回 None。
    p 里可以多给 tie_weights（默认 False）。目录里已有检查点时自动续训；已经训完则直接返回。
    """
    out = Path(out)
    overrides = overrides or {}
    device = setup_distributed()
    rank, _, world_size = dist_info()
    say = print if rank == 0 else (lambda *args, **kwargs: None)
    say(f"{title}：profile={profile}，输出目录 {out}，设备 {device}，进程数 {world_size}")
    try:
        # 分词器和 token 文件只由 rank 0 准备，其他进程等它做完再读取
        if rank == 0:
            tok = _load_or_train_tokenizer(out / "tokenizer", p["corpus"], p["vocab_size"], p["tokenizer_chars"], say)
            paths = prepare_pretraining_data(tok, corpus=p["corpus"])
        _barrier()
        if rank != 0:  # rank 0 已经写好：这里只是读取、校验后复用
            tok = BPETokenizer.load(out / "tokenizer")
            paths = prepare_pretraining_data(tok, corpus=p["corpus"], progress=False)
        train, val = (load_token_bin(paths[s], tok, verify=False) for s in ("train", "val"))
        say(f"数据：train {len(train):,} 个 token，val {len(val):,} 个 token（{paths['train'].parent}）")

        torch.manual_seed(p["seed"])
        model = Llama(LlamaConfig(vocab_size=tok.vocab_size, max_seq_len=p["block_size"], dim=p["dim"],
                                  n_layers=p["n_layers"], n_heads=p["n_heads"], n_kv_heads=p["n_kv_heads"],
                                  tie_weights=p.get("tie_weights", False)))
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in p.items() if k in fields}, checkpoint_dir=str(out / "checkpoints"),
                          resume="auto")
        global_batch = cfg.batch_size * cfg.grad_accum_steps * world_size
        say(f"模型：Llama，{model.num_params() / 1e6:.2f} M 参数；每步 {global_batch} 条 × {cfg.block_size} token"
            f"（每进程 {cfg.batch_size} × 累积 {cfg.grad_accum_steps} × {world_size} 个进程）")
        try:
            trainer = Trainer(model, train, val, cfg)
        except TrainingFinishedError as e:
            say(str(e))
            if rank == 0 and not (out / "model" / WEIGHTS).exists():  # 训完了但最终模型没来得及保存
                save_model(load_model(latest_checkpoint(out / "checkpoints")), out / "model")
                tok.save(out / "model")
            return out / "model" if rank == 0 else None
        start_step = trainer.step
        if start_step == 0:
            say(f"从头开始训练，共 {cfg.max_steps} 步。")
        history = trainer.fit()
        if rank == 0:
            save_model(model, out / "model", extra={"profile": profile, "step": trainer.step})
            tok.save(out / "model")
            atomic_write_json(out / "history.json", history.as_dict())
            _append_jsonl(out / "train_log.jsonl", {
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": profile, "overrides": overrides,
                "start_step": start_step, "end_step": trainer.step, "world_size": world_size, "device": str(device),
                "seconds": round(history.seconds, 2), "tokens_per_sec": round(history.tokens_per_sec, 1),
                "mfu": history.mfu, "train_loss": history.train_loss[-1] if history.train_loss else None,
                "val_loss": history.val_loss[-1] if history.val_loss else None})
            _save_loss_plot(history, out / "loss.png", f"{title}（{profile}）")
            speed = f"{history.tokens_per_sec:,.0f} token/秒" + (f"，MFU {history.mfu:.1%}" if history.mfu else "")
            say(f"训练完成：第 {trainer.step} 步，{speed}。模型和分词器保存在 {out / 'model'}，损失历史在 {out / 'history.json'}。")
        return out / "model" if rank == 0 else None
    finally:
        cleanup_distributed()


def main(argv: list[str] | None = None) -> int:
    """python -m course_lib.train --profile tiny --out 目录 [--键 值 ...]

    用 CHAPTERS['05_pretraining'] 里这一档的设置预训练一个 Llama：训练（或读取）BPE 分词器 → 把语料写成
    uint16 的 .bin → 训练，定期存检查点。目录里已有检查点时自动续训。多卡：torchrun --nproc_per_node=N -m course_lib.train ...
    （多机时 --out 必须在所有机器都能访问的共享存储上）。输出：
      目录/tokenizer/         分词器
      目录/checkpoints/       最新的检查点（可以 load_model，也用来续训）
      目录/model/             最终模型（save_model 格式）+ 分词器，可以直接 load_model / BPETokenizer.load
      目录/history.json       完整的损失历史；目录/train_log.jsonl 每次运行追加一行摘要；目录/loss.png 损失曲线
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        profile, out, overrides = _parse_args(argv)
        profile = active_profile(profile)
        p = chapter_config(CHAPTER, profile, **overrides)
    except (ValueError, KeyError) as e:
        print(f"错误：{e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    try:
        pretrain(p, out, profile=profile, overrides=overrides)
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"错误：{e}", file=sys.stderr)
        return 1


def _save_loss_plot(history: History, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import plot_losses
    ax = plot_losses(history, title=title)
    with atomic_open(path) as f:
        ax.figure.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)


if __name__ == "__main__":
    from course_lib.train import main as _main  # 用已经导入的那一份模块（见文件开头的说明）
    sys.exit(_main())
