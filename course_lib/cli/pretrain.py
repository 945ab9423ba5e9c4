"""python -m course_lib.train：预训练一个 Llama 的命令行（第 05 章）。

用 CHAPTERS['05_pretraining'] 里这一档的设置：训练（或读取）BPE 分词器 → 把语料写成 uint16 的 .bin → 用 Trainer 训练，
定期存检查点；目录里已有检查点时自动续训。参考模型的构建（python -m course_lib.reference）也调用这里的 pretrain()。
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from ..checkpoint import WEIGHTS, TrainingFinishedError, latest_checkpoint, load_model, save_model
from ..data import CORPORA, corpus_documents
from ..device import get_device
from ..distributed import barrier, cleanup_distributed, dist_info, setup_distributed
from ..files import atomic_open, atomic_write_json, atomic_write_text, write_error
from ..hf_corpus import load_token_folder
from ..llama import Llama, LlamaConfig
from ..profiles import active_profile, chapter_config
from ..token_data import load_token_bin, prepare_pretraining_data
from ..tokenizer import BPETokenizer
from ..train import History, TrainConfig, Trainer

CHAPTER = "05_pretraining"
HELP = """用法：python -m course_lib.train --out 目录 [--profile tiny|small|full] [--键 值 ...]

按第 05 章这一档（profile）的设置预训练一个 Llama：训练（或读取）BPE 分词器 → 语料写成 uint16 的 .bin → 训练，
定期存检查点；目录里已有检查点时自动续训（调大 --max_steps 就是接着多训）。
多卡：torchrun --nproc_per_node=N -m course_lib.train --out 目录 ...
--tokens 文件夹：不用课程语料，改用 python -m course_lib.hf_corpus 写好的 train.bin / val.bin（连同它的分词器）训练。

可以用 --键 值 覆盖的设置：{keys}

输出：目录/tokenizer/ 分词器；目录/checkpoints/ 最新的检查点；目录/model/ 最终模型 + 分词器；
目录/history.json 损失历史；目录/train_log.jsonl 每次运行一行摘要；目录/loss.png 损失曲线。"""


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


def parse_options(argv: list[str]) -> dict[str, str]:
    """命令行的 --键 值（或 --键=值）→ {键: 字符串}；键里的 - 换成 _。写法不对时给出中文错误。"""
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
    return options


def parse_overrides(options: dict[str, str], defaults: dict, extra: str) -> dict:
    """把 options 按 defaults 里同名配置的类型转换成覆盖项；不认识的键给出中文错误（extra 是另外认识的参数）。"""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"不认识的参数 {', '.join('--' + k for k in unknown)}。可以覆盖的键：{', '.join(sorted(defaults))}"
                         f"（另有 {extra}）。")
    return {k: _parse_value(k, v, defaults[k]) for k, v in options.items()}


def _parse_args(argv: list[str]) -> tuple[str | None, str, str | None, dict]:
    """--profile P --out DIR [--tokens DIR]，其余 --键 值 都是对 CHAPTERS['05_pretraining'] 的覆盖。"""
    options = parse_options(argv)
    if "out" not in options:
        raise ValueError("请用 --out 目录 指定输出位置，例如：python -m course_lib.train --profile tiny --out runs/pretrain_tiny")
    profile, out, tokens = options.pop("profile", None), options.pop("out"), options.pop("tokens", None)
    defaults = chapter_config(CHAPTER, profile)  # 不认识的 profile → 中文错误
    return profile, out, tokens, parse_overrides(options, defaults, "--profile、--out、--tokens")


def _tokenizer_of_tokens(tokens_dir, folder: Path, say):
    """--tokens 文件夹（prepare_hf_corpus 的输出）→ (它的分词器, .bin 路径)；分词器复制到 folder（续训时必须是同一个）。"""
    tok, paths = load_token_folder(tokens_dir)
    if (folder / BPETokenizer.MODEL_FILE).exists() and BPETokenizer.load(folder).fingerprint != tok.fingerprint:
        raise ValueError(f"{folder} 里已有另一个分词器（这个目录以前用别的数据训练过），和 --tokens {tokens_dir} 的分词器不同。"
                         "请换一个 --out 目录。")
    tok.save(folder)
    say(f"分词器：用 {tokens_dir} 自带的分词器（词表 {tok.vocab_size}）")
    return tok, paths


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


def configs(p: dict, vocab_size: int, out: Path) -> tuple[LlamaConfig, TrainConfig]:
    """配置 p → (模型结构, 训练设置)。命令行在做任何耗时的事之前先调用一次：--max_steps -5 这类错误立刻报出来。"""
    if p["corpus"] not in CORPORA:
        raise ValueError(f"不认识的语料 --corpus {p['corpus']!r}。可选：{', '.join(CORPORA)}。")
    model_cfg = LlamaConfig(vocab_size=vocab_size, max_seq_len=p["block_size"], dim=p["dim"], n_layers=p["n_layers"],
                            n_heads=p["n_heads"], n_kv_heads=p["n_kv_heads"], tie_weights=p.get("tie_weights", False))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in p.items() if k in fields}, checkpoint_dir=str(out / "checkpoints"),
                      resume="auto")
    return model_cfg, cfg


def check_out(out) -> Path:
    """--out 必须是一个（可以新建的）文件夹；现在就建好，写不进去时立刻报错，而不是训练完才发现。"""
    if not str(out).strip():
        raise ValueError("--out 不能是空的：请给一个新文件夹，例如 --out data/runs/pretrain_tiny"
                         "（空字符串会把文件写进当前目录）。")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} 是一个文件，不是文件夹：请换一个文件夹的路径。")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(str(write_error(e, out / "tokenizer"))) from None
    return out


def _append_jsonl(path: Path, record: dict) -> None:
    """在 JSON Lines 文件末尾追加一行（整个文件原子重写：日志很小）。"""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + json.dumps(record, ensure_ascii=False) + "\n")


def pretrain(p: dict, out: str | os.PathLike, profile: str = "custom", overrides: dict | None = None,
             title: str = "第 05 章预训练", tokens_dir: str | os.PathLike | None = None) -> Path | None:
    """按配置 p（CHAPTERS['05_pretraining'] 那样的 dict）预训练一个 Llama，输出写到 out（见 main 的说明）。

    tokens_dir：prepare_hf_corpus 写好的文件夹（train.bin、val.bin、tokenizer/）；给了就用它，不训练分词器、
    不用 p["corpus"]（p["vocab_size"]、p["tokenizer_chars"] 也不起作用：词表就是那个分词器的）。

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
        if rank == 0 and tokens_dir is not None:
            tok, paths = _tokenizer_of_tokens(tokens_dir, out / "tokenizer", say)
        elif rank == 0:
            tok = _load_or_train_tokenizer(out / "tokenizer", p["corpus"], p["vocab_size"], p["tokenizer_chars"], say)
            paths = prepare_pretraining_data(tok, corpus=p["corpus"])
        barrier()
        if rank != 0:  # rank 0 已经写好：这里只是读取、校验后复用
            tok = BPETokenizer.load(out / "tokenizer")
            paths = (prepare_pretraining_data(tok, corpus=p["corpus"], progress=False) if tokens_dir is None
                     else load_token_folder(tokens_dir, verify=False)[1])
        train, val = (load_token_bin(paths[s], tok, verify=False) for s in ("train", "val"))
        say(f"数据：train {len(train):,} 个 token，val {len(val):,} 个 token（{paths['train'].parent}）")

        torch.manual_seed(p["seed"])
        model_cfg, cfg = configs(p, tok.vocab_size, out)
        model = Llama(model_cfg)
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
        final = trainer.plain_model()           # parallel=fsdp 时所有进程一起收集切分的权重，rank 0 拿到完整的一份
        if rank == 0:
            save_model(final, out / "model", extra={"profile": profile, "step": trainer.step})
            tok.save(out / "model")
            atomic_write_json(out / "history.json", history.as_dict())
            _append_jsonl(out / "train_log.jsonl", {
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": profile, "overrides": overrides,
                "tokens_dir": None if tokens_dir is None else str(tokens_dir),
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
    """python -m course_lib.train --profile tiny --out 目录 [--tokens 文件夹] [--键 值 ...]

    用 CHAPTERS['05_pretraining'] 里这一档的设置预训练一个 Llama：训练（或读取）BPE 分词器 → 把语料写成
    uint16 的 .bin → 训练，定期存检查点。目录里已有检查点时自动续训。多卡：torchrun --nproc_per_node=N -m course_lib.train ...
    （多机时 --out 必须在所有机器都能访问的共享存储上）。输出：
      目录/tokenizer/         分词器
      目录/checkpoints/       最新的检查点（可以 load_model，也用来续训）
      目录/model/             最终模型（save_model 格式）+ 分词器，可以直接 load_model / BPETokenizer.load
      目录/history.json       完整的损失历史；目录/train_log.jsonl 每次运行追加一行摘要；目录/loss.png 损失曲线
    """
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(HELP.format(keys=", ".join(sorted(chapter_config(CHAPTER, "tiny")))))
        return 0
    try:
        profile, out, tokens, overrides = _parse_args(argv)
        profile = active_profile(profile)
        p = chapter_config(CHAPTER, profile, **overrides)
        configs(p, p["vocab_size"], Path(out))  # 设置不合法（--max_steps -5、--dim 130）：现在就报，不等分词器训练完
        if tokens is not None:
            load_token_folder(tokens, verify=False)  # 文件夹不对、缺文件、分词器对不上：现在就报
        get_device()  # COURSE_DEVICE=cuda 但没有 GPU 之类：现在就说清楚，而不是训练开始时给 traceback
        out = check_out(out)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        print(f"错误：{e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return run_command(lambda: pretrain(p, out, profile=profile, overrides=overrides, tokens_dir=tokens),
                       out / "checkpoints")


def run_command(work, checkpoints: Path) -> int:
    """执行耗时的部分：出错时打印一行中文错误（退出码 1），Ctrl-C 时说明进度保存在哪里（退出码 130），都没有 traceback。"""
    try:
        work()
        return 0
    except KeyboardInterrupt:
        print(f"\n已中断。最新的检查点在 {checkpoints}：重新运行同一条命令会从那里续训。", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        print(f"错误：{' '.join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__}",
              file=sys.stderr)
        return 1


def _save_loss_plot(history: History, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import plot_losses
    ax = plot_losses(history, title=title)
    with atomic_open(path) as f:
        ax.figure.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
