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
        "tiny": dict(corpus="news", batch_size=256, max_steps=1500, lr=1.0, eval_interval=100, eval_iters=20),
        "small": dict(corpus="news", batch_size=1024, max_steps=3000, lr=1.0, eval_interval=200, eval_iters=50),
        "full": dict(corpus="news", batch_size=4096, max_steps=3000, lr=1.0, eval_interval=200, eval_iters=50),
    },
    "02_self_attention": {
        # 只有 1 层的小 GPT，训练一会儿，让注意力热力图有意义；max_vocab 小一点，算得快。
        "tiny": dict(corpus="news", max_vocab=1500, block_size=16, n_layer=1, n_head=4, n_embd=64,
                     batch_size=64, max_steps=1500, lr=1e-2, warmup_steps=50, eval_interval=250, eval_iters=20),
        "small": dict(corpus="news", max_vocab=3000, block_size=32, n_layer=2, n_head=4, n_embd=128,
                      batch_size=64, max_steps=3000, lr=3e-3, warmup_steps=100, eval_interval=500, eval_iters=50),
        "full": dict(corpus="news", max_vocab=None, block_size=64, n_layer=2, n_head=8, n_embd=256,
                     batch_size=128, max_steps=5000, lr=2e-3, warmup_steps=200, eval_interval=500, eval_iters=100),
    },
    "03_gpt": {
        "tiny": dict(corpus="news", max_vocab=3000, block_size=64, n_layer=4, n_head=4, n_embd=128,
                     dropout=0.0, batch_size=32, max_steps=1200, lr=2e-3, warmup_steps=50,
                     eval_interval=100, eval_iters=20),
        "small": dict(corpus="news", max_vocab=None, block_size=256, n_layer=6, n_head=6, n_embd=384,
                      dropout=0.1, batch_size=64, max_steps=5000, lr=1e-3, warmup_steps=200,
                      eval_interval=250, eval_iters=50),
        "full": dict(corpus="news", max_vocab=None, block_size=512, n_layer=12, n_head=12, n_embd=768,
                     dropout=0.1, batch_size=64, max_steps=10000, lr=6e-4, warmup_steps=500,
                     eval_interval=500, eval_iters=100),
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
