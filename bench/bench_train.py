"""训练吞吐量基准：course_lib.GPT + Trainer  对比  一个最小的纯 PyTorch 训练循环。

两边形状、批大小、优化器（AdamW）、注意力实现（SDPA）完全相同；都不做评估。
交替运行多轮，取 tokens/s 的中位数，结果写进 docs/benchmarks.md。

    python bench/bench_train.py            # 默认：第 03 章 tiny profile 的形状，CPU
    python bench/bench_train.py --device cuda --runs 5
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _report import write_section  # noqa: E402

from course_lib import GPT, GPTConfig, TrainConfig, Trainer, chapter_config  # noqa: E402
from course_lib.files import atomic_write_json  # noqa: E402


# ---------------------------------------------------------------- 最小的纯 PyTorch 版本（基准线）
class PlainBlock(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.out = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class PlainGPT(nn.Module):
    def __init__(self, V, T, L, H, C):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.Sequential(*[PlainBlock(C, H) for _ in range(L)])
        self.ln = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1), device=idx.device))
        return self.head(self.ln(self.blocks(x)))


def run_plain(shape, data, steps, device):
    torch.manual_seed(0)
    model = PlainGPT(shape["vocab"], shape["block"], shape["layers"], shape["heads"], shape["embd"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda" or None)
    B, T = shape["batch"], shape["block"]

    def step():
        ix = torch.randint(len(data) - T, (B,))
        chunk = data[ix[:, None] + torch.arange(T + 1)].to(device)
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * B * T / (time.perf_counter() - t0)


def run_course_lib(shape, data, steps, device):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=shape["vocab"], block_size=shape["block"], n_layer=shape["layers"],
                          n_head=shape["heads"], n_embd=shape["embd"]))
    cfg = TrainConfig(max_steps=3, batch_size=shape["batch"], block_size=shape["block"], lr=1e-3,
                      eval_interval=0, progress=False, log=False, device=str(device))
    trainer = Trainer(model, data, None, cfg)
    trainer.fit()  # 预热 3 步
    trainer.cfg.max_steps = 3 + steps
    _sync(device)
    t0 = time.perf_counter()
    trainer.fit()
    _sync(device)
    return steps * shape["batch"] * shape["block"] / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_markdown(r: dict) -> None:
    """把结果写进 docs/benchmarks.md 里 <!-- bench_train --> 标记之间（数字只来自这次运行）。"""
    s = r["shape"]
    table = "\n".join([
        f"形状：词表 {s['vocab']}、上下文 {s['block']}、{s['layers']} 层、{s['heads']} 头、{s['embd']} 维、批大小 {s['batch']}"
        f"（第 03 章 tiny profile）；设备 {r['device']}（{r['machine']}），torch {r['torch']}；"
        f"每轮 {r['steps_per_run']} 步，交替运行 {r['runs']} 轮取中位数。",
        "",
        "| 实现 | tokens/s（中位数） | 各轮 |",
        "|---|---|---|",
        f"| 纯 PyTorch 最小循环 | {r['plain_median']:,.0f} | {', '.join(f'{v:,.0f}' for v in r['plain_tok_s'])} |",
        f"| course_lib.GPT + Trainer | {r['course_lib_median']:,.0f} | {', '.join(f'{v:,.0f}' for v in r['course_lib_tok_s'])} |",
        "",
        f"**比值 course_lib / plain = {r['ratio']:.3f}**（目标 ≥ 1.0：课程库不带来额外开销）。",
    ])
    write_section(ROOT / "docs" / "benchmarks.md", f"bench_train:{r['device'].split(':')[0]}", table)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="结果 JSON（默认 docs/bench_train_<设备>.json）")
    args = ap.parse_args()
    device = torch.device(args.device)
    args.out = args.out or ROOT / "docs" / f"bench_train_{device.type}.json"
    c = chapter_config("03_gpt", "tiny")
    shape = dict(vocab=c["max_vocab"], block=c["block_size"], layers=c["n_layer"], heads=c["n_head"],
                 embd=c["n_embd"], batch=c["batch_size"])
    data = torch.randint(shape["vocab"], (200_000,))
    plain, lib = [], []
    for r in range(args.runs):  # 交替运行，机器负载的波动对两边一样
        plain.append(run_plain(shape, data, args.steps, device))
        lib.append(run_course_lib(shape, data, args.steps, device))
        print(f"第 {r + 1} 轮：plain {plain[-1]:,.0f} tok/s | course_lib {lib[-1]:,.0f} tok/s", flush=True)
    result = {
        "device": str(device), "machine": f"{platform.machine()}, {torch.get_num_threads()} 线程",
        "torch": torch.__version__, "shape": shape, "steps_per_run": args.steps, "runs": args.runs,
        "plain_tok_s": plain, "course_lib_tok_s": lib,
        "plain_median": statistics.median(plain), "course_lib_median": statistics.median(lib),
    }
    result["ratio"] = result["course_lib_median"] / result["plain_median"]
    atomic_write_json(args.out, result)
    write_markdown(result)
    print(f"中位数：plain {result['plain_median']:,.0f} tok/s，course_lib {result['course_lib_median']:,.0f} tok/s，"
          f"比值 {result['ratio']:.3f}")


if __name__ == "__main__":
    main()
