"""第 06 章：监督微调（supervised fine-tuning，SFT）——把只会续写的基座模型教成会按格式回答的助手。

这个模块是 SFT 的「机制」（题目从哪里来见 course_lib.sft_data，怎么打分见 course_lib.sft_eval）：
- 损失掩码（loss masking）：encode_sft_example 把对话编码成 token，labels 只在助手回复（和它结尾的 <|im_end|>）
  上是 token id，其余位置都是 -100（交叉熵忽略它们）：模型只学「怎么回答」，不学「怎么提问」。
- SFTDataset：编码、截断、跳过没有可训练 token 的样本（并计数），collate 补齐成批次（<|pad|>=2，labels=-100）。
- 训练：train_sft 就是预训练用的同一个 Trainer，只换了两样东西——批次（LengthGroupedBatches：按长度分组，
  补齐浪费少）和损失（sft_batch_loss：masked_loss 默认按样本平均，两个 token 的「正面」和四十个 token 的释义分量相同）。
  所以 SFT 也有混合精度 + GradScaler、梯度累积、多卡和精确续训。
- load_sft_model()：第 07–09 章的入口；data/runs/sft 里没有微调好的模型时，用本章同一个函数和配置现场训练一个。

截断策略（max_len 放不下一段对话时）：
1. 先从最早的一轮（user + assistant）开始整轮丢掉历史，system 提示保留，直到放得下或只剩最后一轮；
   —— 最后一轮是要学的回答，历史越旧越不重要；整轮丢弃保证留下的仍是合法的 ChatML。
2. 只剩一轮还放不下：保留前 max_len 个 token，切掉回复的尾巴（被切掉的部分不训练，也不会教模型「不说 <|im_end|>」
   以外的坏习惯：没有 <|im_end|> 的位置根本不在序列里）。
3. 切完一个可训练的 token 都不剩（提示本身就超过 max_len）：这个样本跳过，并记在 SFTDataset.stats["skipped"] 里。
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from .chat_format import IM_START, check_chat_tokenizer, check_trainable, encode_chat, sanitize
from .checks import check_int, check_module
from .distributed import dist_info
from .files import file_lock, read_json
from .losses import batch_losses, weighted_mean
from .paths import runs_dir
from .train import History, TrainConfig, Trainer

IGNORE = -100  # PyTorch 交叉熵默认忽略的标签值（ignore_index）


# ---------------------------------------------------------------- 1. 编码与损失掩码
def _encode_with_labels(messages, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """逐条消息编码：返回 (ids, labels, 每一轮（user 开头）在 ids 里的起点)。"""
    ids, labels, round_starts = [tokenizer.bos_id], [IGNORE], []
    newline = tokenizer.encode("\n")
    for m in messages:
        if m["role"] == "user":
            round_starts.append(len(ids))
        head = tokenizer.encode(f"{IM_START}{m['role']}\n")
        body = tokenizer.encode(sanitize(m["content"])) + [tokenizer.im_end_id]
        train = m["role"] == "assistant"
        ids += head + body + newline
        labels += [IGNORE] * len(head) + (body if train else [IGNORE] * len(body)) + [IGNORE] * len(newline)
    return ids, labels, round_starts


def encode_sft_example(messages, tokenizer, max_len: int | None = None) -> dict:
    """一段对话 → {"input_ids", "labels", "n_trainable", "truncated", "dropped_rounds"}。

    input_ids 与 chat_format.encode_chat(messages) 完全相同；labels 与 input_ids 等长：助手回复的 token
    和它结尾的 <|im_end|> 处等于 input_ids，其余（bos、system、user、<|im_start|>assistant\\n、换行）都是 -100。
    训练时 x = input_ids[:-1]、y = labels[1:]（往后错一位，见 SFTDataset.collate）。
    超过 max_len 时按本文件开头写的策略截断；n_trainable 可能因此变成 0（调用方应跳过这个样本）。
    """
    check_trainable(messages)
    check_chat_tokenizer(tokenizer)
    check_int(max_len, "max_len", allow_none=True)
    ids, labels, round_starts = _encode_with_labels(messages, tokenizer)
    full = encode_chat(messages, tokenizer)
    if ids != full:  # 逐条编码必须与整段编码一致，否则掩码的位置就错了
        raise RuntimeError("逐条消息编码的结果与整段编码不同：这个分词器会跨过消息边界合并 token，"
                           "无法安全地确定助手回复的位置。请使用 course_lib 的 BPETokenizer。")
    truncated, dropped = False, 0
    if max_len is not None and len(ids) > max_len:
        truncated = True
        prefix = round_starts[0]  # bos + system（如果有）
        while len(ids) > max_len and dropped < len(round_starts) - 1:  # 1. 整轮丢掉最早的历史
            dropped += 1
            cut = round_starts[dropped]
            ids, labels = ids[:prefix] + ids[cut:], labels[:prefix] + labels[cut:]
            round_starts = [prefix + s - cut for s in round_starts]
        ids, labels = ids[:max_len], labels[:max_len]  # 2. 还太长：切掉结尾
    return {"input_ids": ids, "labels": labels, "n_trainable": sum(y != IGNORE for y in labels),
            "truncated": truncated, "dropped_rounds": dropped}


def encode_text_example(text: str, tokenizer, max_len: int | None = None) -> dict:
    """一段普通文本（预训练那样，不套对话模板）→ 和 encode_sft_example 同样的字典；每个 token 都算损失。

    格式与预训练时一样：<|endoftext|> + 文本 + <|endoftext|>。SFT 里混一点这种样本，模型就不会忘掉语言本身。
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"预训练文本样本的 text 应该是非空的字符串，收到 {text!r:.40}。")
    check_int(max_len, "max_len", allow_none=True)
    ids = [tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.eos_id]
    truncated = max_len is not None and len(ids) > max_len
    ids = ids[:max_len] if truncated else ids
    labels = [IGNORE] + ids[1:]
    return {"input_ids": ids, "labels": labels, "n_trainable": len(ids) - 1, "truncated": truncated,
            "dropped_rounds": 0}


class SFTDataset(torch.utils.data.Dataset):
    """编码好的 SFT 样本。examples 是 build_sft_examples / load_alpaca / load_sharegpt 的结果（或直接是 messages 列表）。

    stats：n_input（输入多少条）、n_kept（保留）、n_truncated（被截断但仍保留）、n_skipped（截断后没有可训练的
    token，跳过）、n_tokens、n_trainable（可训练 token 总数）。被跳过的样本不会悄悄进入训练。
    """

    def __init__(self, examples, tokenizer, max_len: int = 256, pad_id: int | None = None):
        if check_int(max_len, "max_len") < 8:
            raise ValueError(f"max_len={max_len} 太小，至少要放得下 bos、<|im_start|>assistant 和一个回复 token。")
        self.max_len = max_len
        self.pad_id = tokenizer.pad_id if check_int(pad_id, "pad_id", 0, allow_none=True) is None else pad_id
        self.items, self.skipped = [], []
        n_trunc = 0
        given, examples = examples, list(examples) if hasattr(examples, "__iter__") and not isinstance(examples, (str, dict)) else []
        if not examples:
            raise ValueError(f"examples 应该是非空的样本列表（build_sft_examples、load_alpaca 的结果，或 messages 的列表），"
                             f"收到 {type(given).__name__} {given!r:.40}。")
        for i, ex in enumerate(examples):
            if isinstance(ex, dict) and "messages" not in ex and "text" not in ex:
                raise ValueError(f"第 {i + 1} 条样本是字典，却没有 \"messages\" 键（有：{sorted(ex)}）。"
                                 "样本的格式是 {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}"
                                 "（或者一段预训练文本 {\"text\": ...}）。")
            if isinstance(ex, dict) and "messages" not in ex:
                enc = encode_text_example(ex["text"], tokenizer, max_len)
            else:
                enc = encode_sft_example(ex["messages"] if isinstance(ex, dict) else ex, tokenizer, max_len)
            if enc["n_trainable"] == 0:
                self.skipped.append(ex)
                continue
            n_trunc += enc["truncated"]
            enc["task"] = ex.get("task") if isinstance(ex, dict) else None
            self.items.append(enc)
        self.stats = {"n_input": len(self.items) + len(self.skipped), "n_kept": len(self.items),
                      "n_truncated": n_trunc, "n_skipped": len(self.skipped),
                      "n_tokens": sum(len(e["input_ids"]) for e in self.items),
                      "n_trainable": sum(e["n_trainable"] for e in self.items)}
        if not self.items:
            raise ValueError(f"{self.stats['n_input']} 条样本里没有一条剩下可训练的 token（全部被截断掉了）。"
                             f"请调大 max_len（现在是 {max_len}），或缩短提示。")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def lengths(self) -> list[int]:
        """每条样本的 token 数（LengthGroupedBatches 按它分组）。"""
        return [len(e["input_ids"]) for e in self.items]

    def collate(self, batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """补齐成 (x, y)：x = input_ids[:, :-1]，y = labels[:, 1:]；补齐的位置 x 用 pad_id、y 用 -100（pad_batch）。"""
        return pad_batch(batch, self.pad_id)


def pad_batch(encoded: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """编码好的样本（有 input_ids、labels）补齐成 (x, y)：x = input_ids[:, :-1]，y = labels[:, 1:]。

    补在右边：因果注意力只往左看，右边的 pad 影响不到前面任何位置的输出，所以不需要注意力掩码。
    SFT（SFTDataset）和偏好对齐（align.PreferenceDataset、GRPO 的采样）共用这一段。
    """
    length = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[row, :len(e["labels"])] = torch.tensor(e["labels"])
    return ids[:, :-1], labels[:, 1:]


# ---------------------------------------------------------------- 3. 训练（课程唯一的 Trainer，配上 SFT 的批次和损失）
# train_sft 的配置键（与 profiles.CHAPTERS["06_sft"] 的同名键一一对应；那里多出的键，例如 max_new_tokens，这里不用）
TRAIN_KEYS = ("max_len", "batch_size", "max_steps", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
              "grad_clip", "eval_interval", "seed", "per_example_loss")


def masked_loss(logits: torch.Tensor, y: torch.Tensor, per_example: bool = True) -> torch.Tensor:
    """只在 y ≠ -100 的位置算交叉熵。logits: (B, T, V)，y: (B, T)。

    per_example=False：所有可训练 token 一起平均（与 model(x, y) 返回的损失相同）。
    per_example=True：先在每条样本内部平均，再对样本平均——每条样本分量相同。否则一条 40 个 token 的释义
    抵得上 20 条只有「正面」+ <|im_end|> 两个 token 的情感题，短回答的任务几乎得不到梯度。
    """
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none")  # (B, T)，-100 处为 0
    n = (y != IGNORE).sum(1)                                                                       # (B,)
    if not per_example:
        return ce.sum() / n.sum()
    return (ce.sum(1) / n.clamp(min=1)).mean()


def sft_batch_loss(model, batch, per_example: bool = True) -> torch.Tensor:
    """Trainer 的 loss_fn：batch = (x, y)，只在助手 token 上算交叉熵（masked_loss）。"""
    x, y = batch
    return masked_loss(model(x)[0], y, per_example)


def length_grouped_batches(lengths: list[int], batch_size: int, generator: torch.Generator,
                           group: int = 16) -> list[list[int]]:
    """一轮（epoch）的批次：打乱后每 group 个批次的样本按长度排序再切开，批次顺序再打乱一次。

    同一批里的样本长度相近，补齐浪费的计算就少（随机成批时约 40% 的位置是 pad）；每批样本仍是随机的。
    Hugging Face Trainer 的 group_by_length 也是这个思路。
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), group * batch_size):
        chunk = sorted(order[start:start + group * batch_size], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class LengthGroupedBatches:
    """SFT 的批次来源（给 Trainer 的 batches=）：一轮一轮地用 length_grouped_batches 排好批次，每次取一批、补齐。

    随机数来自自己的 torch.Generator；state_dict() 存下它和这一轮还没用完的批次，续训时恢复，所以续训看到的批次与
    一口气训练完全相同。多卡时每个全局批有 batch_size × 进程数条，第 rank 个进程取其中第 rank、rank + 进程数……条。
    """

    def __init__(self, dataset: SFTDataset, batch_size: int, seed: int = 1337, rank: int = 0, world_size: int = 1):
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.lengths = dataset.lengths()
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: list[list[int]] = []

    def next(self, device) -> tuple[torch.Tensor, ...]:
        """下一批：dataset.collate 的结果（SFT 是 (x, y)；偏好数据还多一个参考模型的 log 概率），都放到 device 上。"""
        rows: list[int] = []
        while len(rows) < self.world_size:  # 多卡时跳过凑不齐每个进程一条的尾批（单卡时每批都用）
            if not self.queue:
                self.queue = length_grouped_batches(self.lengths, self.batch_size * self.world_size, self.generator)
            rows = self.queue.pop()
        batch = self.dataset.collate([self.dataset[i] for i in rows[self.rank::self.world_size]])
        return tuple(t.to(device) for t in batch)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state(), "queue": [list(b) for b in self.queue]}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])
        self.queue = [list(b) for b in state["queue"]]

    def fingerprint(self) -> dict:
        return {"train_examples": len(self.lengths), "train_tokens": sum(self.lengths)}


def sft_loss(model, dataset: SFTDataset, batch_size: int = 32, per_example: bool = True) -> float:
    """整个数据集上的掩码损失（确定性）。per_example 的含义见 masked_loss；True 时是每条样本平均损失的平均。"""
    device = next(model.parameters()).device
    batches = [dataset.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
               for start in range(0, len(dataset), batch_size)]
    weights = [y.shape[0] if per_example else int((y != IGNORE).sum()) for _, y in batches]
    losses = batch_losses(model, ((x.to(device), y.to(device)) for x, y in batches),
                          functools.partial(sft_batch_loss, per_example=per_example))
    return weighted_mean(losses, weights)


def _as_dataset(examples, tokenizer, max_len: int) -> SFTDataset | None:
    if examples is None or isinstance(examples, SFTDataset):
        return examples
    return SFTDataset(examples, tokenizer, max_len)


def finetune_config(model, config: dict | None, overrides: dict, progress: bool, who: str, keys=TRAIN_KEYS,
                    **train_config) -> tuple[dict, TrainConfig]:
    """微调类训练（SFT、DPO、GRPO）共用：章节配置字典 + 覆盖项 → (用到的键, TrainConfig)。多余的键忽略，缺的键报错。"""
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config 应该是 chapter_config(...) 返回的字典，收到 {type(config).__name__} {config!r:.30}。")
    p = {k: v for k, v in {**(config or {}), **overrides}.items() if k in keys}
    missing = [k for k in keys if k not in p]
    if missing:
        raise ValueError(f"{who} 缺少这些配置：{missing}。请传 config=chapter_config(...)，或逐项给出。")
    cfg = TrainConfig(max_steps=p["max_steps"], batch_size=p["batch_size"], block_size=p["max_len"], lr=p["lr"],
                      min_lr_ratio=p["min_lr_ratio"], warmup_steps=p["warmup_steps"], weight_decay=p["weight_decay"],
                      grad_clip=p["grad_clip"], eval_interval=p["eval_interval"], seed=p["seed"], progress=progress,
                      log=False, device=str(next(model.parameters()).device), **train_config)
    return p, cfg


def sft_trainer(model, tokenizer, train_examples, val_examples=None, config: dict | None = None,
                progress: bool = True, *, checkpoint_dir: str | None = None, checkpoint_interval: int = 0,
                resume: str | None = None, **overrides) -> Trainer:
    """配置好做 SFT 的 Trainer（还没开始训练）：批次是 LengthGroupedBatches，损失是 sft_batch_loss，
    评估记下「上次评估以来各步训练损失的平均」和整个验证集的 sft_loss。其余（AdamW、预热 + 余弦、裁剪、
    混合精度 + GradScaler、梯度累积、多卡、检查点与精确续训）都是预训练用的同一个 Trainer。参数见 train_sft。
    """
    check_module(model, "train_sft")
    p, cfg = finetune_config(model, config, overrides, progress, "train_sft", checkpoint_dir=checkpoint_dir,
                             checkpoint_interval=checkpoint_interval, resume=resume)
    train = _as_dataset(train_examples, tokenizer, p["max_len"])
    val = _as_dataset(val_examples, tokenizer, p["max_len"])
    per_example = bool(p["per_example_loss"])
    rank, _, world_size = dist_info()

    def evaluate(trainer: Trainer) -> dict | None:
        if trainer.step == 0 and val is None:
            return None
        h = trainer.history
        recent = h.step_loss[(h.eval_step[-1] if h.eval_step else 0):trainer.step]
        return {"train": sum(recent) / len(recent) if recent else float("nan"),
                "val": sft_loss(trainer.model, val, per_example=per_example) if val is not None else float("nan")}

    return Trainer(model, config=cfg, batches=LengthGroupedBatches(train, cfg.batch_size, cfg.seed, rank, world_size),
                   loss_fn=functools.partial(sft_batch_loss, per_example=per_example), evaluate=evaluate, desc="SFT")


def train_sft(model, tokenizer, train_examples, val_examples=None, config: dict | None = None,
              progress: bool = True, **overrides) -> History:
    """全参数微调（full fine-tuning）：每步取 batch_size 条样本（length_grouped_batches），补齐，只在助手 token 上算损失。

    config 用 chapter_config("06_sft") 的字典（多余的键忽略）；overrides 覆盖其中的项，例如 max_steps=20，
    也可以给 checkpoint_dir / checkpoint_interval / resume（与 TrainConfig 的含义相同）。
    训练循环就是预训练用的 Trainer（见 sft_trainer）。返回 train.History：
    step_loss 每步的损失；eval_step / train_loss（上次评估以来各步的平均）/ val_loss（整个验证集，sft_loss）。
    训练完模型处于 eval 模式。
    """
    history = sft_trainer(model, tokenizer, train_examples, val_examples, config, progress, **overrides).fit()
    model.eval()
    return history


# ---------------------------------------------------------------- 5. 保存与读取（第 07–09 章的入口）
def sft_model_dir() -> Path:
    """微调好的模型放在这里（data/runs/sft）：model.safetensors + config.json + 分词器。"""
    return runs_dir() / "sft"


def _base_fingerprint() -> str:
    """SFT 的基座（reference.profile_base_dir：tiny 档是参考模型，small / full 档是本档第 05 章的模型）的 sha256。"""
    from .reference import profile_base_dir
    return hashlib.sha256((profile_base_dir(quiet=True) / "model.safetensors").read_bytes()).hexdigest()


def save_sft_model(model, tokenizer, folder: str | Path | None = None, extra: dict | None = None) -> Path:
    """用 course_lib 的格式保存微调后的模型和分词器（checkpoint.save_model + tokenizer.save）。"""
    from .checkpoint import save_model
    folder = Path(folder) if folder is not None else sft_model_dir()
    with file_lock(folder):             # 别的进程读到的要么是旧的一对，要么是新的一对（模型 + 分词器）
        save_model(model, folder, extra={"sft": extra or {}, "base_sha256": _base_fingerprint()})
        tokenizer.save(folder)
    return folder


def build_sft_model(profile: str | None = None, progress: bool = True, save: bool = True, device=None, **overrides):
    """从本档的基座模型（reference.profile_base_dir：tiny 档是参考基座）出发，按 chapter_config("06_sft") 做一遍 SFT：
    返回 (model, tokenizer, history)。

    第 06 章的 notebook 和 load_sft_model() 用的都是这个函数、这份配置，所以两边得到的是同一个模型（CPU 上逐位相同）。
    device=None 时自动选择（有 GPU 就用 GPU）。
    """
    from .device import get_device, seed_everything
    from .profiles import chapter_config
    from .reference import load_profile_base

    cfg = chapter_config("06_sft", profile, **overrides)
    seed_everything(cfg["seed"])
    model, tokenizer = load_profile_base(device=get_device(device), profile=profile)
    from .sft_data import build_sft_examples
    history = train_sft(model, tokenizer, build_sft_examples("train"), build_sft_examples("val"), cfg, progress)
    if save:
        save_sft_model(model, tokenizer, extra={"config": {k: cfg[k] for k in TRAIN_KEYS},
                                                "val_loss": history.val_loss[-1] if history.val_loss else None})
    return model, tokenizer, history


def load_sft_model(device: str = "cpu", rebuild: bool = True):
    """读取第 06 章微调好的模型，返回 (model, tokenizer)（eval 模式）。

    data/runs/sft 里没有、它是从另一版基座模型微调出来的（参考模型更新过）、或者训练配置与当前 profile 的
    chapter_config("06_sft") 不同，rebuild=True 时用
    build_sft_model() 现场重新训练并保存（tiny 档约 1–2 分钟），所以第 07–09 章可以单独运行。
    """
    folder = sft_model_dir()
    with file_lock(folder):   # 几个进程同时缺这个模型时（并行的 notebook 测试），只有一个在训练，其余等它写好再读
        return _load_or_build_sft(folder, device, rebuild)


def _load_or_build_sft(folder: Path, device, rebuild: bool):
    from .checkpoint import load_model
    from .profiles import chapter_config
    from .tokenizer import BPETokenizer
    fresh = False
    if (folder / "model.safetensors").exists() and (folder / BPETokenizer.META_FILE).exists():
        meta = read_json(folder / "config.json", "SFT 模型的配置", f"删掉 {folder}，load_sft_model() 会重新训练一个。")
        cfg = chapter_config("06_sft")
        wanted = json.loads(json.dumps({k: cfg[k] for k in TRAIN_KEYS}))  # 与存进 JSON 后的样子比较
        fresh = meta.get("base_sha256") == _base_fingerprint() and meta.get("sft", {}).get("config") == wanted
    if not fresh:
        if not rebuild:
            raise FileNotFoundError(f"{folder} 里没有与当前参考模型和配置对应的 SFT 模型。请先运行第 06 章，"
                                    "或调用 load_sft_model(rebuild=True) 自动训练一个。")
        steps = chapter_config("06_sft")["max_steps"]
        print(f"{folder} 里还没有微调好的模型（或基座模型已更新）：按第 06 章的配置现场训练一个（{steps} 步，"
              "tiny 档在 2 核 CPU 上约 1–2 分钟；进度条如下）……", flush=True)
        build_sft_model(progress=True)
    return load_model(folder, device=device).eval(), BPETokenizer.load(folder)
