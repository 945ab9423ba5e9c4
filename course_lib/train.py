"""训练器（Trainer）：第 01 章手写的训练循环，加上真正训练时少不了的几样东西。

读这个文件可以从上往下：
1. TrainConfig：所有训练设置；lr_at：预热 + 余弦学习率；
2. 批次从哪里来：get_batch / RandomWindows（预训练：从一长串 token 里随机截窗口）。别的训练（第 06 章的 SFT 批次、
   第 10 章的偏好数据）只要提供同样的 next(device) / state_dict() / load_state_dict() / fingerprint() 四个方法；
3. make_optimizer：AdamW，矩阵做权重衰减、偏置和归一化参数不做；
4. 损失：默认是 losses.lm_loss(model, batch)，「下一个 token」的交叉熵；
5. Trainer.train_step：一次参数更新 = 学习率 → 若干个小批次（梯度累积）的前向、损失、反向 → 裁剪 → 更新；
   Trainer.fit：反复 train_step，定期评估、打印、存检查点。

Trainer 给每一种训练同样的东西：混合精度（CUDA 上自动 bf16 / fp16，fp16 时配 GradScaler）、梯度累积、梯度裁剪、
多卡 DDP（torchrun 启动时自动启用）、进度条、吞吐量与 MFU、评估钩子、精确续训（检查点里存下一切，
CPU 上中断后续训的最终权重与一口气训完逐位相同）。只有「批次」和「损失函数」因训练而异。
命令行预训练：python -m course_lib.train --profile tiny --out 目录（实现在 course_lib/cli/pretrain.py）。
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_bools, check_int, check_ints, check_module, check_numbers, check_tokens, check_windows
from .checkpoint import (TrainingFinishedError, describe_diff, latest_checkpoint, load_unique_state_dict,
                         model_fingerprint, read_checkpoint, write_checkpoint)
from .device import autocast, needs_grad_scaler
from .distributed import (barrier, dist_info, full_model_copy, gather, load_sharded, mean_over_ranks,
                          save_sharded_optimizer, setup_distributed, shard_model)
from .files import as_path
from .flops import flops_per_token, peak_flops
from .losses import batch_losses, lm_loss
from .report import progress_bar


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
    parallel: str = "ddp"         # torchrun 多进程时怎么分工："ddp"（每个进程一份完整的模型）或 "fsdp"（参数、梯度、优化器状态
                                  # 切成 N 份，每个进程只存 1/N：FSDP2 的 fully_shard）；单进程时不起作用
    checkpoint_dir: str | None = None  # 检查点放在这里（每个检查点是其中的 step_XXXXXX 文件夹，只保留最新的）
    checkpoint_interval: int = 0  # 每隔多少步存一次；0 = 只在 fit() 结束时存
    resume: str | None = None     # 续训：检查点文件夹的路径；"auto" = checkpoint_dir 里有检查点就续训，没有就从头训练

    def __post_init__(self):
        check_ints(self, ("max_steps", "batch_size", "block_size", "eval_iters", "grad_accum_steps"))
        check_ints(self, ("eval_interval", "warmup_steps", "checkpoint_interval"), minimum=0)  # 0：不评估/不预热/只在最后存
        check_ints(self, ("seed",), minimum=None)
        check_numbers(self, ("lr",), strict=True)
        check_numbers(self, ("min_lr_ratio",), high=1.0)
        check_numbers(self, ("weight_decay",) + (("grad_clip",) if self.grad_clip is not None else ()))
        check_bools(self, ("progress", "log", "compile"))
        betas = tuple(self.betas) if hasattr(self.betas, "__iter__") and not isinstance(self.betas, str) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas 必须是两个 [0, 1) 之间的数，例如 (0.9, 0.95)，收到 {self.betas!r}。")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel 只能是 'ddp'（每个进程一份完整的模型）或 'fsdp'（参数切成几份），收到 {self.parallel!r}。")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule 只能是 'cosine' 或 'constant'，收到 {self.schedule!r}。")
        for name in ("checkpoint_dir", "resume"):
            value = getattr(self, name)
            if value not in (None, "", "auto") and as_path(value, f"TrainConfig.{name}").is_file():
                raise ValueError(f"TrainConfig.{name}={str(value)!r} 是一个文件：检查点是文件夹，请换一个文件夹的路径。")
        if self.checkpoint_interval and not self.checkpoint_dir:
            raise ValueError("设置了 checkpoint_interval，却没有 checkpoint_dir：请同时给出检查点要存到哪个文件夹。")
        if self.resume == "auto" and not self.checkpoint_dir:
            raise ValueError("resume='auto' 表示「从 checkpoint_dir 里的检查点续训」，请同时设置 checkpoint_dir。")


# 这些设置一变，续训就不再等于一口气训完（数据顺序、梯度、学习率都会不同），续训时必须和检查点里的一致。
# max_steps 例外：调大它就是「再多训一会儿」（余弦学习率从续训处起按新的总步数计算，会打印提示）。
EXACT_FIELDS = ("batch_size", "block_size", "grad_accum_steps", "lr", "min_lr_ratio", "warmup_steps", "schedule",
                "weight_decay", "betas", "grad_clip", "seed", "parallel")


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
    try:
        n = len(data)
        if not 0 < block_size < n:
            check_windows(data, block_size, batch_size)  # 说明是哪个参数不对
        starts = torch.randint(n - block_size, (batch_size * world_size,), generator=generator)
        starts = starts[rank * batch_size:(rank + 1) * batch_size]
        index = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
        if isinstance(data, np.ndarray):
            chunk = torch.from_numpy(data[index.numpy()].astype(np.int64))
        else:
            chunk = data[index].long()
    except (TypeError, IndexError, RuntimeError):  # 只在出错时才检查参数：正常取批没有额外开销
        check_windows(data, block_size, batch_size)
        raise
    x, y = chunk[:, :-1], chunk[:, 1:]
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class RandomWindows:
    """预训练的批次来源：每次用 get_batch 随机截取 batch_size 个长为 block_size 的窗口，返回 (x, y)。

    随机数来自自己的 torch.Generator（种子 seed），不受别处随机数的影响；state_dict() 存下它的状态，续训时恢复，
    所以续训看到的批次与一口气训练完全相同。Trainer 没有收到 batches= 时就用它包装 train_data。
    """

    def __init__(self, data, block_size: int, batch_size: int, seed: int = 1337, rank: int = 0, world_size: int = 1):
        check_windows(data, block_size, batch_size, "train_data")
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.data, self.block_size, self.batch_size, self.generator, device,
                         rank=self.rank, world_size=self.world_size)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    def fingerprint(self) -> dict:
        """续训时必须不变的东西：数据的长度（换了数据，同样的随机数就取到别的窗口）。"""
        return {"train_tokens": len(self.data)}


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
    step_loss: list = field(default_factory=list)   # 每一步的训练损失（有噪声；多卡时是所有进程的平均）
    eval_step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)  # 评估时的训练损失（默认：在 eval_iters 个批次上的平均）
    val_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    tokens_per_sec: float = 0.0   # 最近一次 fit() 的吞吐量：所有进程合计，只算训练步的时间（不含评估和存检查点）
    seconds: float = 0.0
    mfu: float | None = None      # 模型算力利用率（0–1）；CPU 或不认识的 GPU 上是 None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------- 训练器
class Trainer:
    """训练一个模型。最常见的用法（预训练）：Trainer(model, train_tokens, val_tokens, TrainConfig(...)).fit()。

    - model(x, y) 返回 (logits, loss)；train_data / val_data 是一维 token 序列（张量或 .bin 的 memmap）。
    - 别的训练换掉两样东西：batches=（批次来源，见 RandomWindows 的四个方法）和 loss_fn=（loss_fn(model, batch)
      返回一个标量损失）。evaluate=（evaluate(trainer) 返回 {"train": …, "val": …} 或 None 表示这次不记）
      换掉默认的评估（estimate_loss）。第 06 章的 sft.train_sft 就是这样配置出来的。
    - desc：进度条左边的文字。

    用 torchrun 启动多个进程时自动用 DDP：每个进程训练全局批里属于自己的一段，梯度在所有进程间求平均；
    只有 rank 0 打印和保存检查点。self.model 始终是原始模型（没有被 DDP / torch.compile 包装）。
    """

    def __init__(self, model: torch.nn.Module, train_data=None, val_data=None, config: TrainConfig | None = None, *,
                 batches=None, loss_fn=None, evaluate=None, desc: str = "训练"):
        check_module(model, "Trainer")
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer 的 config 应该是 TrainConfig(...)，收到 {type(config).__name__}。字典请写成 TrainConfig(**配置)"
                            "（只留 TrainConfig 认识的键）。")
        self.cfg = config or TrainConfig()
        self.rank, _, self.world_size = dist_info()
        self.device = setup_distributed(self.cfg.device)
        self.is_main = self.rank == 0
        if batches is None:
            if train_data is None:
                raise ValueError("Trainer 需要训练数据：传 train_data（一维 token 序列），或传 batches=（批次来源）。")
            batches = RandomWindows(train_data, self.cfg.block_size, self.cfg.batch_size, self.cfg.seed,
                                    self.rank, self.world_size)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            if data is not None:
                check_tokens(data, name, vocab if isinstance(vocab, int) else None)
        if val_data is not None and evaluate is None:
            check_windows(val_data, self.cfg.block_size, name="val_data")
        self.model = model.to(self.device)
        self.train_data, self.val_data = train_data, val_data
        self.batches, self.loss_fn, self.desc = batches, loss_fn or lm_loss, desc
        self.evaluate = evaluate or Trainer.estimate_loss
        self.fsdp = self.world_size > 1 and self.cfg.parallel == "fsdp"
        self._flops_per_token = flops_per_token(self.model, self.cfg.block_size)   # 切分之前：参数还是完整的形状
        if self.fsdp:                 # 优化器要拿切分之后的参数（每个进程只有自己那一份），所以先切分再建优化器
            shard_model(self.model, self.device, self.world_size)
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        # fp16 的梯度可能小到下溢成 0：GradScaler 先把损失放大再反向，更新前再缩回来（bf16 和 fp32 不需要）
        self.scaler = torch.amp.GradScaler(self.device.type) if needs_grad_scaler(self.device) else None
        self.step = 0
        self.history = History()
        self._saved_step, self._tokens = None, 0  # _tokens：这次 fit() 训练过的 token 数（算吞吐量）
        self._peak_flops = peak_flops(self.device)
        # 前向、反向走 train_model：可能被 torch.compile 和 DDP 包了两层，但参数就是 self.model 的参数
        # （FSDP 不包一层：fully_shard 直接改造了 self.model 本身）
        self.train_model = torch.compile(self.model) if self.cfg.compile else self.model
        if self.world_size > 1 and not self.fsdp:
            torch.manual_seed(self.cfg.seed + self.rank)  # 各进程的 dropout 掩码不同（否则每张卡丢掉同样的位置）
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.resume == "auto":
            if latest_checkpoint(self.cfg.checkpoint_dir) is not None:
                self.resume(self.cfg.checkpoint_dir)
        elif self.cfg.resume:
            self.resume(self.cfg.resume)

    def plain_model(self) -> torch.nn.Module | None:
        """完整的、没有切分的模型（保存、生成时用）。单进程和 DDP 时就是 self.model；FSDP 时所有进程都要调用
        （一起把切分的权重收集起来），只有 rank 0 拿到一份 CPU 上的完整模型，其他进程得到 None。"""
        return full_model_copy(self.model) if self.fsdp else self.model

    def _print(self, message: str) -> None:
        if self.is_main and self.cfg.log:
            tqdm.write(message)

    # ------------------------------------------------------------ 评估
    def estimate_loss(self) -> dict:
        """默认的评估：在固定的 eval_iters 个随机批次上求平均损失（每次评估用同一批窗口，曲线更平滑）。
        多卡时再对所有进程求平均。"""
        out = {}
        for split, data in (("train", self.train_data), ("val", self.val_data)):
            if data is None:
                continue
            gen = torch.Generator().manual_seed(self.cfg.seed + 1)
            batches = (get_batch(data, self.cfg.block_size, self.cfg.batch_size, gen, self.device,
                                 rank=self.rank, world_size=self.world_size) for _ in range(self.cfg.eval_iters))
            out[split] = mean_over_ranks(torch.stack(batch_losses(self.model, batches, self.loss_fn)).mean())
        return out

    def _evaluate_and_log(self, tokens_per_sec: float | None = None) -> None:
        losses = self.evaluate(self)
        if losses is None:
            return
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
        """一次参数更新：grad_accum_steps 个小批次的梯度相加（每个损失先除以累积数），再裁剪、更新。返回这一步的损失。"""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum_steps):
            batch = self.batches.next(self.device)
            self._tokens += batch[0].numel() * self.world_size
            # DDP 在每次 backward 时把梯度在进程间求平均；累积的前几个小批次不必通信，最后一个再一起同步
            last = micro == cfg.grad_accum_steps - 1
            if self.fsdp:             # FSDP 的做法：前几个小批次不做梯度的 reduce-scatter，最后一个再做
                self.model.set_requires_gradient_sync(last)
            sync = (self.train_model.no_sync() if self.world_size > 1 and not self.fsdp and not last
                    else contextlib.nullcontext())
            with sync:
                with autocast(self.device):
                    loss = self.loss_fn(self.train_model, batch)
                loss = loss / cfg.grad_accum_steps
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # 先缩回真实大小，裁剪才有意义
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)      # 梯度里有 inf/nan 时跳过这一步，并调小放大倍数
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.history.lr.append(lr)
        return mean_over_ranks(total)

    def fit(self, stop_at: int | None = None) -> History:
        """训练到 max_steps，返回 History。可以多次调用：会从上次停下的 step 继续。

        stop_at：这次只训练到第 stop_at 步就返回（学习率仍按 max_steps 计算），之后再调用 fit() 接着训。
        设置了 checkpoint_dir 时，每 checkpoint_interval 步、以及每次返回前都保存检查点。
        """
        cfg = self.cfg
        end = cfg.max_steps if check_int(stop_at, "stop_at", 0, allow_none=True) is None else min(stop_at, cfg.max_steps)
        self.model.train()
        if self.step == 0 and cfg.eval_interval:
            self._evaluate_and_log()
        t_start, train_seconds, self._tokens = time.perf_counter(), 0.0, 0
        window_seconds, window_tokens = 0.0, 0  # 两次评估之间的训练时间和 token 数，用来算这一段的吞吐量
        bar = progress_bar(total=cfg.max_steps, initial=self.step, desc=self.desc, enabled=cfg.progress and self.is_main)
        while self.step < end:
            t0, tokens0 = time.perf_counter(), self._tokens
            loss = self.train_step()
            dt = time.perf_counter() - t0
            train_seconds, window_seconds = train_seconds + dt, window_seconds + dt
            window_tokens += self._tokens - tokens0
            self.history.step_loss.append(loss)
            bar.update(1)
            if self.step % 10 == 0:
                recent = self.history.step_loss[-10:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
            if cfg.eval_interval and (self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps):
                self._evaluate_and_log(window_tokens / window_seconds if window_seconds > 0 else None)
                window_seconds, window_tokens = 0.0, 0
            if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                self.save_checkpoint()
        bar.close()
        h = self.history
        h.seconds += time.perf_counter() - t_start
        if self._tokens:
            h.tokens_per_sec = self._tokens / train_seconds if train_seconds > 0 else 0.0
            h.mfu = self.mfu(h.tokens_per_sec)
        if cfg.checkpoint_dir and self._saved_step != self.step:
            self.save_checkpoint()
        return h

    # ------------------------------------------------------------ 检查点与精确续训
    def _train_fingerprint(self) -> dict:
        fp = {name: getattr(self.cfg, name) for name in EXACT_FIELDS}
        fp["betas"] = [float(b) for b in fp["betas"]]
        fp["world_size"] = self.world_size
        fp.update(self.batches.fingerprint())
        return fp

    def save_checkpoint(self, folder=None):
        """把续训需要的一切存进 folder/step_XXXXXX（folder 默认是 cfg.checkpoint_dir），返回这个文件夹。

        文件夹里：model.safetensors + config.json（和 save_model 相同，可以直接 load_model），
        trainer_state.pt（优化器、GradScaler、步数、批次来源的状态、各进程的 torch/cuda 随机数状态、
        History，以及训练设置和模型结构的「指纹」）。格式和原子写入见 checkpoint.write_checkpoint。
        多卡时每个进程都要调用（要收集各进程的随机数状态），只有 rank 0 写文件。
        """
        if not (folder or self.cfg.checkpoint_dir):
            raise ValueError("不知道把检查点存到哪里：请设置 TrainConfig(checkpoint_dir=...) 或传入 folder。")
        root = folder or self.cfg.checkpoint_dir
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        torch_rng, cuda_rngs = gather(torch.get_rng_state(), self.device), gather(cuda_rng, self.device)
        model, shards = self.model, None
        if self.fsdp:                 # 优化器状态每个进程各写自己那一份；权重收集成完整的一份，照常写成 model.safetensors
            shards = save_sharded_optimizer(self.model, self.optimizer, root, self.step)
            model = self.plain_model()
        if self.is_main:
            write_checkpoint(root, self.step, model, {
                "max_steps": self.cfg.max_steps,
                "optimizer": None if self.fsdp else self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "batches": self.batches.state_dict(),
                "torch_rng": torch_rng, "cuda_rng": cuda_rngs if cuda_rng is not None else None,
                "history": self.history.as_dict(),
                "train_config": self._train_fingerprint(), "model": model_fingerprint(self.model),
                "torch_version": str(torch.__version__)}, extra_dir=shards)
        barrier()
        self._saved_step = self.step
        return Path(root) / f"step_{self.step:06d}"

    def resume(self, folder) -> "Trainer":
        """从检查点恢复全部训练状态，之后 fit() 的结果与没有中断时逐位相同（CPU 上；GPU 上非常接近）。

        folder 可以是某个 step_XXXXXX 文件夹，也可以是 checkpoint_dir（取其中最新的）。
        多卡时每个进程都要调用。返回 self，可以写 Trainer(...).resume(folder).fit()。
        """
        path, state, tensors = read_checkpoint(folder)
        saved, current = state["model"], model_fingerprint(self.model)
        if saved["config"] != current["config"] or saved["shapes"] != current["shapes"]:
            diff = (describe_diff(saved["config"], current["config"]) if saved["config"] and current["config"]
                    else describe_diff(saved["shapes"], current["shapes"]))
            raise ValueError(f"检查点 {path} 来自另一个模型配置（{diff}）。请用和检查点相同的模型配置，"
                             "或者换一个新的 checkpoint_dir 从头训练。")
        saved_cfg, current_cfg = state["train_config"], self._train_fingerprint()
        if saved_cfg != current_cfg:
            raise ValueError(f"这些训练设置和检查点 {path} 里的不一样，续训就不再等于一口气训完："
                             f"{describe_diff(saved_cfg, current_cfg)}。请改回检查点里的值，"
                             "或者换一个新的 checkpoint_dir 从头训练。")
        if state["step"] >= self.cfg.max_steps:
            raise TrainingFinishedError(
                f"检查点 {path} 已经训练完了：第 {state['step']} 步，max_steps={self.cfg.max_steps}。"
                f"要接着多训一些，请调大 max_steps（例如 max_steps={state['step'] * 2}，命令行里写 --max_steps {state['step'] * 2}）。")
        if state["max_steps"] != self.cfg.max_steps:
            self._print(f"提示：max_steps 从 {state['max_steps']} 改成了 {self.cfg.max_steps}，"
                        "余弦学习率从这里起按新的总步数计算（结果不再与一口气训练逐位相同，这是预期的）。")
        flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in self.optimizer.param_groups]
        if self.fsdp:
            load_sharded(self.model, self.optimizer, tensors, path)
        else:
            load_unique_state_dict(self.model, tensors, f"检查点 {path}")
            self.optimizer.load_state_dict(state["optimizer"])
        for group, keep in zip(self.optimizer.param_groups, flags):
            group.update(keep)  # fused 等选项取决于现在的设备，不沿用检查点里的（GPU 上存的检查点也能在 CPU 上续训）
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"][self.rank])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][self.rank], self.device)
        known = {f.name for f in dataclasses.fields(History)}
        self.history = History(**{k: v for k, v in state["history"].items() if k in known})
        self.step = self._saved_step = state["step"]
        self._print(f"从检查点 {path} 续训：第 {self.step} 步，目标 {self.cfg.max_steps} 步。")
        return self


if __name__ == "__main__":  # python -m course_lib.train：命令行在 course_lib/cli/pretrain.py
    from course_lib.cli.pretrain import main
    raise SystemExit(main())
