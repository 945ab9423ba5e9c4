"""训练器（Trainer）。第 03 章的版本：随机窗口取批、AdamW、预热 + 余弦学习率、梯度裁剪、
混合精度（CUDA 上自动 bf16/fp16）、定期估计 train/val 损失、进度条，返回可以直接画图的历史。

同一个 Trainer 在 CPU、MPS、CUDA 上都能跑；CPU 上固定种子时结果逐位可复现。
第 05 章会继续扩展：梯度累积、检查点与精确续训、torchrun 多卡（DDP）。
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .device import autocast, get_device, needs_grad_scaler


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32
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

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "block_size", "eval_iters"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"TrainConfig.{name} 必须是正整数，收到 {getattr(self, name)!r}。")
        if self.eval_interval < 0:
            raise ValueError(f"eval_interval 不能是负数（0 表示不评估），收到 {self.eval_interval}。")
        if self.lr <= 0:
            raise ValueError(f"学习率 lr 必须 > 0，收到 {self.lr}。")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule 只能是 'cosine' 或 'constant'，收到 {self.schedule!r}。")


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
              device: torch.device | str = "cpu"):
    """从一长串 token 里随机截取 batch_size 个长为 block_size 的窗口。

    x = data[i : i+block_size]，y = data[i+1 : i+block_size+1]（y 是 x 往后错一位：每个位置的「下一个字」）。
    data 可以是 torch 张量，也可以是 numpy 数组 / np.memmap（第 05 章的 uint16 .bin 文件）。
    """
    n = len(data)
    if n <= block_size:
        raise ValueError(f"数据只有 {n} 个 token，不够截取长为 block_size={block_size} 的窗口（需要至少 {block_size + 1} 个）。"
                         "请换更长的语料，或调小 block_size。")
    starts = torch.randint(n - block_size, (batch_size,), generator=generator)
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


@dataclass
class History:
    """训练记录：每步的损失，以及每次评估时的 train/val 损失。"""
    step_loss: list = field(default_factory=list)   # 每一步的训练损失（有噪声）
    eval_step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)  # 评估时在 eval_iters 个批次上的平均
    val_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    tokens_per_sec: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Trainer:
    """model(x, y) 必须返回 (logits, loss)。train_data / val_data 是一维 token 序列。"""

    def __init__(self, model: torch.nn.Module, train_data, val_data=None, config: TrainConfig | None = None):
        self.cfg = config or TrainConfig()
        self.device = get_device(self.cfg.device)
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

    @torch.no_grad()
    def estimate_loss(self) -> dict:
        """在固定的 eval_iters 个随机批次上求平均损失（每次评估用同一批窗口，曲线更平滑）。"""
        was_training = self.model.training
        self.model.eval()
        out = {}
        for split, data in (("train", self.train_data), ("val", self.val_data)):
            if data is None:
                continue
            gen = torch.Generator().manual_seed(self.cfg.seed + 1)
            losses = torch.zeros(self.cfg.eval_iters)
            for i in range(self.cfg.eval_iters):
                x, y = get_batch(data, self.cfg.block_size, self.cfg.batch_size, gen, self.device)
                with autocast(self.device):
                    _, loss = self.model(x, y)
                losses[i] = loss.item()
            out[split] = losses.mean().item()
        self.model.train(was_training)
        return out

    def _evaluate_and_log(self) -> None:
        losses = self.estimate_loss()
        h = self.history
        h.eval_step.append(self.step)
        h.train_loss.append(losses["train"])
        h.val_loss.append(losses.get("val", float("nan")))
        if self.cfg.log:
            val = f" | val {losses['val']:.4f}" if "val" in losses else ""
            tqdm.write(f"step {self.step:5d} | train {losses['train']:.4f}{val}")

    def train_step(self) -> float:
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(self.train_data, cfg.block_size, cfg.batch_size, self._batch_gen, self.device)
        with autocast(self.device):
            _, loss = self.model(x, y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
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
        return loss.item()

    def fit(self) -> History:
        """训练到 max_steps，返回 History。可以多次调用：会从上次停下的 step 继续。"""
        cfg = self.cfg
        self.model.train()
        if self.step == 0 and cfg.eval_interval:
            self._evaluate_and_log()
        t0, tokens = time.perf_counter(), 0
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="训练", disable=not cfg.progress)
        while self.step < cfg.max_steps:
            loss = self.train_step()
            tokens += cfg.batch_size * cfg.block_size
            self.history.step_loss.append(loss)
            bar.update(1)
            if self.step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
            if cfg.eval_interval and (self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps):
                self._evaluate_and_log()
        bar.close()
        elapsed = time.perf_counter() - t0
        self.history.seconds += elapsed
        self.history.tokens_per_sec = tokens / elapsed if elapsed > 0 else 0.0
        return self.history
