"""bench/ 里各个脚本共用的部分：计时、比值的统计（区间和结论），以及把结果写进 docs/（数字只来自这次运行）。"""
from __future__ import annotations

import math
import re
import statistics
import time
from pathlib import Path

import torch


# ---------------------------------------------------------------- 计时
def sync(device: torch.device) -> None:
    """GPU 上的计算是异步的：计时前后要等它真正做完。"""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_fit(trainer, warmup: int, steps: int, device: torch.device) -> float:
    """先用 trainer.fit() 训练 warmup 步（不计时），再接着训 steps 步，返回这 steps 步用的秒数。

    trainer.cfg.max_steps 在调用前应当等于 warmup；之后等于 warmup + steps。
    """
    trainer.fit()  # 预热：torch.compile 的编译、cuDNN/cuBLAS 的选算法、内存池的分配都发生在这里
    trainer.cfg.max_steps = warmup + steps
    sync(device)
    t0 = time.perf_counter()
    trainer.fit()
    sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- 比值的统计
def t_quantile(p: float, df: int) -> float:
    """自由度 df 的 Student t 分布的 p 分位数（0.5 < p < 1）：对 CDF 数值积分（Simpson）再二分求根。"""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"需要 0.5 < p < 1、df ≥ 1，收到 p={p}、df={df}。")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:  # x ≥ 0；被积函数光滑，2000 段的误差远小于 1e-9
        f = lambda u: c * (1 + u * u / df) ** (-(df + 1) / 2)  # noqa: E731
        h = x / n
        s = f(0) + f(x) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def ratio_summary(ratios: list[float], level: float = 0.95) -> dict:
    """各轮比值（同一轮里 A ÷ B）的统计：轮数、中位数、范围，以及几何平均比值的 t 区间。

    区间的算法：对各轮比值取对数，按 t 分布算均值的 level 置信区间，再取指数变回比值——
    这是「几何平均比值」的区间（比值取对数后左右对称：1.1 和 1/1.1 离 1 一样远）。
    至少要 2 轮才能估计波动。
    """
    n = len(ratios)
    if n < 2:
        raise ValueError(f"至少要 2 轮才能估计波动，收到 {n} 轮。")
    if min(ratios) <= 0:
        raise ValueError(f"比值必须是正数，收到 {ratios}。")
    logs = [math.log(r) for r in ratios]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    lo, hi = math.exp(mean - half), math.exp(mean + half)
    return {"n": n, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "geo_mean": math.exp(mean), "level": level, "ci_low": lo, "ci_high": hi,
            "interval": "几何平均比值的 t 区间，各轮比值取对数后计算", "verdict": verdict(lo, hi)}


FASTER, SLOWER, NOISE = "course_lib 更快", "course_lib 更慢", "差别在噪声之内（within noise）"


def verdict(ci_low: float, ci_high: float) -> str:
    """结论只看区间：整个区间都 > 1 才说更快，都 < 1 才说更慢，其余一律是「噪声之内」。"""
    if ci_low > 1:
        return FASTER
    if ci_high < 1:
        return SLOWER
    return NOISE


# ---------------------------------------------------------------- 写进 docs/
def write_section(path: Path, tag: str, body: str) -> None:
    """用 body 替换 path 里 <!-- tag --> … <!-- /tag --> 之间的内容；还没有这对标记就追加到文件末尾。"""
    from course_lib.files import atomic_write_text
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"<!-- {tag} -->\n{body}\n<!-- /{tag} -->"
    if f"<!-- {tag} -->" in text:
        text = re.sub(rf"<!-- {re.escape(tag)} -->.*?<!-- /{re.escape(tag)} -->", lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)


def publish(docs: Path, name: str, result: dict, body: str) -> None:
    """结果写两处：docs/<name 里的冒号换成下划线>.json（全部原始数字），和 docs/benchmarks.md 里 <!-- name --> 一节。"""
    from course_lib.files import atomic_write_json
    atomic_write_json(docs / f"{name.replace(':', '_')}.json", result)
    write_section(docs / "benchmarks.md", name, body)
