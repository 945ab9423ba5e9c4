"""训练吞吐量基准：course_lib.GPT + Trainer  对比  一个最小的纯 PyTorch 训练循环。

两边形状、批大小、优化器（AdamW）、注意力实现（SDPA）、梯度裁剪完全相同；都不做评估。
每一轮两边各跑一次（先后顺序逐轮交替），算这一轮的比值 course_lib tokens/s ÷ plain tokens/s；
报告轮数、比值的中位数和范围、几何平均比值的 95% t 区间，结论由区间决定（见 _report.verdict）。
结果写进 docs/benchmarks.md 里 <!-- bench_train:设备 --> 一节和 docs/bench_train_<设备>.json。

    python bench/bench_train.py            # 默认：第 03 章 tiny profile 的形状，CPU
    python bench/bench_train.py --device cuda --runs 10   # GPU 上波动小，轮数可以少一些
"""
from __future__ import annotations

import argparse
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
from _report import publish, ratio_summary, sync, timed_fit  # noqa: E402

from course_lib import GPT, GPTConfig, TrainConfig, Trainer, chapter_config  # noqa: E402


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
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * B * T / (time.perf_counter() - t0)


def run_course_lib(shape, data, steps, device):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=shape["vocab"], block_size=shape["block"], n_layer=shape["layers"],
                          n_head=shape["heads"], n_embd=shape["embd"]))
    cfg = TrainConfig(max_steps=3, batch_size=shape["batch"], block_size=shape["block"], lr=1e-3,
                      eval_interval=0, progress=False, log=False, device=str(device))
    trainer = Trainer(model, data, None, cfg)
    return steps * shape["batch"] * shape["block"] / timed_fit(trainer, 3, steps, device)  # 预热 3 步，和 plain 一样


RUNNERS = {"plain": run_plain, "course_lib": run_course_lib}


def measure(shape, data, steps, device, runs, warmup_rounds=1, log=print) -> dict:
    """交替运行：第 1、3、5… 轮先跑 plain，第 2、4、6… 轮先跑 course_lib，机器负载的波动和「谁先跑」对两边一样。

    每轮的比值只用同一轮里的两个数相除：慢慢变化的负载（另一个人的测试、降频）在比值里大部分抵消。
    正式计时前的 warmup_rounds 轮不计入（进程里第一次运行的额外开销：分配内存、加载算子）。
    """
    for _ in range(warmup_rounds):
        for run in RUNNERS.values():
            run(shape, data, steps, device)
    tok_s = {name: [] for name in RUNNERS}
    order = []
    for r in range(runs):
        names = ["plain", "course_lib"] if r % 2 == 0 else ["course_lib", "plain"]
        order.append(names[0])
        for name in names:
            tok_s[name].append(RUNNERS[name](shape, data, steps, device))
        log(f"第 {r + 1}/{runs} 轮（先跑 {names[0]}）：plain {tok_s['plain'][-1]:,.0f} tok/s | "
            f"course_lib {tok_s['course_lib'][-1]:,.0f} tok/s | 比值 {tok_s['course_lib'][-1] / tok_s['plain'][-1]:.3f}")
    ratios = [lib / plain for lib, plain in zip(tok_s["course_lib"], tok_s["plain"])]
    return {"plain_tok_s": tok_s["plain"], "course_lib_tok_s": tok_s["course_lib"], "first_in_round": order,
            "ratios": ratios, "plain_median": statistics.median(tok_s["plain"]),
            "course_lib_median": statistics.median(tok_s["course_lib"]), "ratio": ratio_summary(ratios)}


def markdown(r: dict) -> str:
    """docs/benchmarks.md 里的一节（数字只来自这次运行）。"""
    s, q = r["shape"], r["ratio"]
    nums = lambda xs, f: ", ".join(format(v, f) for v in xs)  # noqa: E731
    return "\n".join([
        f"形状：词表 {s['vocab']}、上下文 {s['block']}、{s['layers']} 层、{s['heads']} 头、{s['embd']} 维、批大小 {s['batch']}"
        f"（第 03 章 tiny profile）；设备 {r['device']}（{r['machine']}），torch {r['torch']}；"
        f"每轮两边各计时 {r['steps_per_run']} 步，共 {q['n']} 轮，先后顺序逐轮交替，"
        f"另有 {r['warmup_rounds']} 轮预热不计入；整个运行用了 {r['wall_seconds'] / 60:.1f} 分钟。",
        "",
        "| | 中位数 | 各轮 |",
        "|---|---|---|",
        f"| 纯 PyTorch 最小循环（tokens/s） | {r['plain_median']:,.0f} | {nums(r['plain_tok_s'], ',.0f')} |",
        f"| course_lib.GPT + Trainer（tokens/s） | {r['course_lib_median']:,.0f} | {nums(r['course_lib_tok_s'], ',.0f')} |",
        f"| 比值 course_lib ÷ plain（同一轮内相除） | {q['median']:.3f} | {nums(r['ratios'], '.3f')} |",
        "",
        f"**比值：{q['n']} 轮，中位数 {q['median']:.3f}，范围 {q['min']:.3f}–{q['max']:.3f}，"
        f"{q['level']:.0%} 区间 [{q['ci_low']:.3f}, {q['ci_high']:.3f}]（{q['interval']}；几何平均 {q['geo_mean']:.3f}）。"
        f"结论：{q['verdict']}。**",
    ])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=20, help="计入统计的轮数（至少 2；共用的 CPU 上波动大，默认 20）")
    ap.add_argument("--steps", type=int, default=40, help="每轮每边计时的步数")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="正式计时前不计入的轮数")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="写 benchmarks.md 和 JSON 的文件夹")
    args = ap.parse_args(argv)
    if args.runs < 2:
        ap.error("--runs 至少是 2：只有一轮就估计不了波动。")
    device = torch.device(args.device)
    c = chapter_config("03_gpt", "tiny")
    shape = dict(vocab=c["max_vocab"], block=c["block_size"], layers=c["n_layer"], heads=c["n_head"],
                 embd=c["n_embd"], batch=c["batch_size"])
    torch.manual_seed(0)
    data = torch.randint(shape["vocab"], (200_000,))
    t0 = time.perf_counter()
    m = measure(shape, data, args.steps, device, args.runs, args.warmup_rounds, log=lambda s: print(s, flush=True))
    result = {
        "device": str(device), "machine": f"{platform.machine()}, {torch.get_num_threads()} 线程",
        "torch": torch.__version__, "shape": shape, "steps_per_run": args.steps, "runs": args.runs,
        "warmup_rounds": args.warmup_rounds, **m, "wall_seconds": time.perf_counter() - t0,
    }
    publish(args.docs, f"bench_train:{device.type}", result, markdown(result))
    q = result["ratio"]
    print(f"比值 course_lib ÷ plain：{q['n']} 轮，中位数 {q['median']:.3f}，范围 {q['min']:.3f}–{q['max']:.3f}，"
          f"{q['level']:.0%} 区间 [{q['ci_low']:.3f}, {q['ci_high']:.3f}]（{q['interval']}）。结论：{q['verdict']}。", flush=True)
    return result


if __name__ == "__main__":
    main()
