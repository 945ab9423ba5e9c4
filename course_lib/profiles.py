"""三档配置（profile）：同一本 notebook，在笔记本 CPU、Colab T4、A100/H100 上都能跑。

- tiny ：只有 CPU；每章在 2 核 CPU 上 ≤ 3 分钟。
- small：一块消费级 GPU 或 Colab 的 T4。
- full ：A100 / H100 级别的 GPU。

选择顺序：函数参数 > 环境变量 COURSE_PROFILE > 自动（有 CUDA → small，否则 tiny）。
每章的超参数都写在下面的 CHAPTERS 表里，notebook 只读取，不自己写死数字。
"""
from __future__ import annotations

import os

import torch

PROFILES = ("tiny", "small", "full")

# 每章每档的超参数。tiny 档的数字是在 2 核 CPU 上实测、保证每章 ≤ 3 分钟挑出来的。
CHAPTERS: dict[str, dict[str, dict]] = {
    "01_bigram": {
        # BigramLM 是一张 V×V 的表：每一步都要更新 V² 个参数，所以用大批次、少步数、较大的 Adam 学习率。
        # tiny 实测（2 核 CPU）：50 步后验证集 4.837，计数模型 4.679；small 的 300 步在 CPU 上实测 4.785（计数 4.736）。
        # max_vocab 与第 03 章相同（同一个字符级分词器）。demo_steps 是手写训练循环演示的步数。
        "tiny": dict(corpus="news", max_vocab=3000, batch_size=512, block_size=64, max_steps=50, lr=0.15,
                     betas=(0.9, 0.99), min_lr_ratio=0.7, eval_interval=5, eval_iters=1, demo_steps=10),
        "small": dict(corpus="news", max_vocab=None, batch_size=512, block_size=64, max_steps=300, lr=0.1,
                      betas=(0.9, 0.99), min_lr_ratio=0.3, eval_interval=25, eval_iters=5, demo_steps=10),
        "full": dict(corpus="news", max_vocab=None, batch_size=1024, block_size=64, max_steps=300, lr=0.1,
                     betas=(0.9, 0.99), min_lr_ratio=0.3, eval_interval=25, eval_iters=5, demo_steps=10),
    },
    "02_self_attention": {
        # 只有 1 层的小 GPT，训练一会儿，让注意力热力图有意义；max_vocab 小一点，算得快。
        "tiny": dict(corpus="news", max_vocab=1500, block_size=16, n_layer=1, n_head=4, n_embd=64,
                     batch_size=64, max_steps=1500, lr=1e-2, warmup_steps=50, eval_interval=250, eval_iters=20,
                     val_loss_max=4.85),  # 实测验证损失 4.752（2 核 CPU），留 0.1 余量
        "small": dict(corpus="news", max_vocab=3000, block_size=32, n_layer=1, n_head=4, n_embd=128,
                      batch_size=64, max_steps=3000, lr=3e-3, warmup_steps=100, eval_interval=500, eval_iters=50,
                      val_loss_max=None),  # None：尚无 GPU 实测，不设上界
        "full": dict(corpus="news", max_vocab=None, block_size=64, n_layer=1, n_head=8, n_embd=256,
                     batch_size=128, max_steps=5000, lr=2e-3, warmup_steps=200, eval_interval=500, eval_iters=100,
                     val_loss_max=None),
    },
    "03_gpt": {
        # tiny：空闲的 2 核 CPU 上训练约 123 秒（约 13.6 k 字/秒）。同样 164 万个字，批大小 16 × 1600 步
        # 比 32 × 800 步好（整个验证集 4.540 vs 4.620）：预算很小时，更新次数比大批次更值钱；不共享权重反而略差（4.566）。
        # bigram_margin = 验证损失至少比二元模型低多少 nats：tiny 实测低 0.139，断言 ≥ 0.09；None 表示尚无实测。
        "tiny": dict(corpus="news", max_vocab=3000, block_size=64, n_layer=4, n_head=4, n_embd=128,
                     dropout=0.0, tie_weights=True, batch_size=16, max_steps=1600, lr=3e-3, min_lr_ratio=0.1,
                     warmup_steps=100, eval_interval=200, eval_iters=10, bigram_margin=0.09),
        "small": dict(corpus="news", max_vocab=None, block_size=256, n_layer=6, n_head=6, n_embd=384,
                      dropout=0.1, tie_weights=True, batch_size=64, max_steps=5000, lr=1e-3, min_lr_ratio=0.1,
                      warmup_steps=200, eval_interval=250, eval_iters=50, bigram_margin=None),
        "full": dict(corpus="news", max_vocab=None, block_size=512, n_layer=12, n_head=12, n_embd=768,
                     dropout=0.1, tie_weights=True, batch_size=64, max_steps=10000, lr=6e-4, min_lr_ratio=0.1,
                     warmup_steps=500, eval_interval=500, eval_iters=100, bigram_margin=None),
    },
    "05_pretraining": {
        # python -m course_lib.train --profile tiny --out 目录：预训练一个 Llama（命令行可以用 --键 值 覆盖下面任何一项）。
        # tokenizer_chars：只用语料里均匀取出的这么多字符训练分词器（None = 全部）；n_kv_heads < n_heads 即 GQA。
        # 每步的 token 数 = batch_size × grad_accum_steps × 进程数 × block_size。small、full 两档尚未在 GPU 上实测。
        "tiny": dict(corpus="news", tokenizer_chars=500_000, vocab_size=3200, block_size=128, dim=128, n_layers=4,
                     n_heads=4, n_kv_heads=2, batch_size=8, grad_accum_steps=2, max_steps=150, lr=2e-3,
                     min_lr_ratio=0.1, warmup_steps=20, weight_decay=0.1, grad_clip=1.0, eval_interval=50,
                     eval_iters=10, checkpoint_interval=50, compile=False, seed=1337),
        "small": dict(corpus="mix", tokenizer_chars=None, vocab_size=6400, block_size=256, dim=384, n_layers=6,
                      n_heads=6, n_kv_heads=2, batch_size=32, grad_accum_steps=2, max_steps=3000, lr=1e-3,
                      min_lr_ratio=0.1, warmup_steps=200, weight_decay=0.1, grad_clip=1.0, eval_interval=250,
                      eval_iters=50, checkpoint_interval=500, compile=False, seed=1337),
        "full": dict(corpus="mix", tokenizer_chars=None, vocab_size=6400, block_size=512, dim=512, n_layers=8,
                     n_heads=8, n_kv_heads=4, batch_size=32, grad_accum_steps=2, max_steps=3000, lr=1e-3,
                     min_lr_ratio=0.1, warmup_steps=200, weight_decay=0.1, grad_clip=1.0, eval_interval=250,
                     eval_iters=50, checkpoint_interval=500, compile=True, seed=1337),
    },
}


def active_profile(name: str | None = None) -> str:
    """返回当前生效的 profile 名字。不认识的名字给出中文错误。"""
    name = name or os.environ.get("COURSE_PROFILE") or ("small" if torch.cuda.is_available() else "tiny")
    name = name.strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"不认识的 profile {name!r}。只能是 {', '.join(PROFILES)} 之一："
            "例如在终端里 export COURSE_PROFILE=tiny，或在 notebook 里 os.environ['COURSE_PROFILE']='tiny'。"
        )
    return name


def chapter_config(chapter: str, profile: str | None = None, **overrides) -> dict:
    """某一章在当前 profile 下的超参数（一个新的 dict，可以随便改）。"""
    if chapter not in CHAPTERS:
        raise KeyError(f"没有第 {chapter!r} 章的配置；已有：{', '.join(CHAPTERS)}。")
    cfg = dict(CHAPTERS[chapter][active_profile(profile)])
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise KeyError(f"第 {chapter} 章的配置里没有这些键：{sorted(unknown)}；可用的键：{sorted(cfg)}。")
    cfg.update(overrides)
    return cfg
