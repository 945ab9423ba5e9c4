"""GPT-2 small（124 M 参数）形状的训练吞吐量和 MFU：course_lib.GPT + Trainer，bf16 自动混合精度、SDPA 注意力、
torch.compile、fused AdamW——也就是课程在 A100 / H100 上（full profile）训练时用的那条路径。

    python bench/bench_gpt2.py                        # 有 GPU 用 GPU；GPT-2 small，批 16 × 1024，compile
    python bench/bench_gpt2.py --batch 32 --no-compile
    python bench/bench_gpt2.py --size tiny --device cpu --steps 2 --warmup 1   # 冒烟测试（tests/test_bench.py）

结果写进 docs/benchmarks.md 里 <!-- bench_gpt2:设备名 --> 标记之间，和 docs/bench_gpt2_<设备名>.json。
MFU（model FLOPs utilization）= 实测 tokens/s × 每 token 的 FLOPs ÷ 这块 GPU 的 bf16 稠密峰值（course_lib.flops.PEAK_FLOPS）；
CPU 和表里没有的 GPU 不估计 MFU。数据是均匀随机的 token：测的是速度，不是学习效果。
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _report import publish, timed_fit  # noqa: E402

from course_lib import GPT, GPTConfig, TrainConfig, Trainer  # noqa: E402
from course_lib.device import autocast_dtype, get_device  # noqa: E402
from course_lib.flops import flops_per_token, peak_flops  # noqa: E402

SIZES = {
    # 词表 50304 = GPT-2 的 50257 补齐到 64 的倍数（矩阵乘法的形状更规整，GPU 上更快）
    "gpt2": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "tiny": dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64),
}


def run(size: str, device: str, batch: int, steps: int, warmup: int, compile: bool) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SIZES[size]))
    block = model.config.block_size
    data = torch.randint(model.config.vocab_size, (max(200_000, 4 * batch * (block + 1)),))
    cfg = TrainConfig(max_steps=warmup, batch_size=batch, block_size=block, lr=6e-4, warmup_steps=0,
                      eval_interval=0, progress=False, log=False, device=str(dev), compile=compile)
    trainer = Trainer(model, data, None, cfg)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = timed_fit(trainer, warmup, steps, dev)  # 预热 warmup 步（torch.compile 的编译在这里），再计时 steps 步
    tok_s = steps * batch * block / seconds
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "size": size, "config": SIZES[size], "params": n_params, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU（{platform.machine()}，{torch.get_num_threads()} 线程）",
        "torch": torch.__version__, "dtype": str(autocast_dtype(dev)).replace("torch.", ""), "compile": compile,
        "batch": batch, "block": block, "steps": steps, "warmup": warmup, "seconds": seconds,
        "tokens_per_sec": tok_s, "flops_per_token": flops_per_token(model, block),
        "peak_flops": peak_flops(dev), "mfu": trainer.mfu(tok_s),
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
    }


def markdown(r: dict) -> str:
    c = r["config"]
    mfu = f"**{r['mfu']:.1%}**" if r["mfu"] is not None else "—（CPU 或不认识的 GPU，不估计）"
    mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "—"
    return "\n".join([
        f"{r['device_name']}，torch {r['torch']}；GPT {c['n_layer']} 层、{c['n_head']} 头、{c['n_embd']} 维、上下文 {c['block_size']}、"
        f"词表 {c['vocab_size']}（{r['params'] / 1e6:.1f} M 参数）；批 {r['batch']} × {r['block']}，{r['dtype']} 自动混合精度，"
        f"torch.compile {'开' if r['compile'] else '关'}；预热 {r['warmup']} 步后计时 {r['steps']} 步。",
        "",
        "| tokens/s | 每 token FLOPs | MFU | 显存峰值 |",
        "|---|---|---|---|",
        f"| {r['tokens_per_sec']:,.0f} | {r['flops_per_token'] / 1e6:,.0f} M | {mfu} | {mem} |",
    ])


def slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")[:40]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    ap.add_argument("--device", default=None, help="默认：有 GPU 用 GPU")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="写 benchmarks.md 和 JSON 的文件夹")
    args = ap.parse_args(argv)
    device = args.device or str(get_device())
    r = run(args.size, device, args.batch, args.steps, args.warmup, args.compile)
    name = slug(r["device_name"] if r["device"].startswith("cuda") else "cpu") + ("" if args.size == "gpt2" else f"_{args.size}")
    publish(args.docs, f"bench_gpt2:{name}", r, markdown(r))
    mfu = f"，MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
    print(f"{r['device_name']}：{r['tokens_per_sec']:,.0f} tokens/s{mfu}", flush=True)
    return r


if __name__ == "__main__":
    main()
