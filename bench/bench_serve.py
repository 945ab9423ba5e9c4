"""服务器吞吐量基准：course_lib.serve 的批量解码（并发 4、8、16 个客户端）对比一个接一个地请求（并发 1）。

服务器和部署时一样是另一个进程（python -m course_lib.serve --model chat --threads 1），客户端是官方的 openai 包
AsyncOpenAI（流式），在这个进程里。模型是参考对话模型。每一轮：同一组 --requests 个请求（温度 1、各自固定 seed，
ignore_eos：每个正好生成 max_tokens 个 token），先一个接一个地发（基准线），再分别以并发 4、8、16 发；
吞吐量 = 这组请求生成的 token 总数（usage.completion_tokens）÷ 墙钟时间。服务器的 GET /stats 记下每段同时解码的请求最多几个。
各并发度的比值只用同一轮里的两个数相除，报告轮数、中位数、范围和几何平均比值的 95 % 区间（见 _report）。
结果写进 docs/benchmarks.md 里 <!-- bench_serve:cpu --> 一节和 docs/bench_serve_cpu.json。

    python bench/bench_serve.py              # 默认 5 轮，每轮 32 个请求
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _report import publish, ratio_summary  # noqa: E402

from course_lib.chat_models import load_chat_model  # noqa: E402

QUESTIONS = ("你是谁？", "计算：23+45=？", "「画蛇添足」是什么意思？", "判断这条评论的情感是正面还是负面：房间很干净，服务也好。",
             "给我讲一个关于月亮的故事", "「床前明月光」的下一句是什么？", "计算：71-38=？", "今天天气怎么样？")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _run(client, n_requests: int, concurrency: int, max_tokens: int) -> tuple[int, float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i):
        async with gate:
            stream = await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                temperature=1.0, seed=i, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
            return usage.completion_tokens

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(n_requests)))
    return sum(counts), time.perf_counter() - t0


def measure(url: str, levels, runs: int, n_requests: int, max_tokens: int, log=print) -> dict:
    import httpx
    import openai
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    stats = url.removesuffix("/v1") + "/stats"
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_run(client, 4, 4, max_tokens))            # 预热：第一次前向、建立连接
        tok_s = {c: [] for c in (1, *levels)}
        peak = {c: 0 for c in levels}
        for r in range(runs):
            order = [1, *levels] if r % 2 == 0 else [*levels, 1]
            for c in order:
                httpx.get(stats, params={"reset": "true"})
                tokens, seconds = loop.run_until_complete(_run(client, n_requests, c, max_tokens))
                tok_s[c].append(tokens / seconds)
                if c != 1:
                    peak[c] = max(peak[c], httpx.get(stats).json()["max_active"])
            log(f"第 {r + 1}/{runs} 轮：" + "，".join(f"并发 {c} {tok_s[c][-1]:,.0f} tok/s" for c in (1, *levels)))
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    ratios = {c: [a / b for a, b in zip(tok_s[c], tok_s[1])] for c in levels}
    return {"tok_s": {str(c): v for c, v in tok_s.items()}, "ratios": {str(c): v for c, v in ratios.items()},
            "ratio": {str(c): ratio_summary(v) for c, v in ratios.items()}, "peak_active": {str(c): v for c, v in peak.items()},
            "median_tok_s": {str(c): statistics.median(v) for c, v in tok_s.items()}}


def markdown(r: dict) -> str:
    rows = ["| 并发客户端 | 吞吐量中位数（tokens/s） | 比值 ÷ 一个接一个（中位数，95 % 区间） | 同时解码的请求最多 |", "|---|---|---|---|",
            f"| 1（一个接一个） | {r['median_tok_s']['1']:,.0f} | 1 | 1 |"]
    for c in r["levels"]:
        q = r["ratio"][str(c)]
        rows.append(f"| {c} | {r['median_tok_s'][str(c)]:,.0f} | ×{q['median']:.2f} [{q['ci_low']:.2f}, {q['ci_high']:.2f}]"
                    f"（{q['verdict']}） | {r['peak_active'][str(c)]} |")
    eight = r["ratio"].get("8")
    goal = "" if eight is None else (f"\n\n目标「并发 8 时 ≥ 3×」：区间下限 {eight['ci_low']:.2f}，"
                                     + ("达到。" if eight["ci_low"] >= 3 else "没有达到。"))
    return "\n".join([
        f"模型：参考对话模型（{r['params'] / 1e6:.2f} M 参数），服务器 {r['slots']} 个槽位；每轮 {r['requests']} 个请求"
        f"（温度 1、各自的 seed，ignore_eos：每个正好生成 {r['max_tokens']} 个 token，流式）；服务器是另一个进程"
        f"（python -m course_lib.serve，PyTorch {r['server_threads']} 个线程），客户端 openai.AsyncOpenAI；"
        f"{r['runs']} 轮，先后顺序逐轮交替；设备 {r['device']}（{r['machine']}），torch {r['torch']}；"
        f"整个运行用了 {r['wall_seconds'] / 60:.1f} 分钟。",
        "", *rows]) + goal


def main(argv=None) -> dict:
    import httpx
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="计入统计的轮数（至少 2）")
    ap.add_argument("--requests", type=int, default=32, help="每轮每个并发度发多少个请求")
    ap.add_argument("--max-tokens", type=int, default=64, help="每个请求最多生成几个 token")
    ap.add_argument("--levels", default="4,8,16", help="要测的并发度（逗号分隔；1 总是测，作为基准线）")
    ap.add_argument("--slots", type=int, default=16, help="服务器的槽位数")
    ap.add_argument("--threads", type=int, default=1, help="服务器的 PyTorch 线程数（python -m course_lib.serve --threads）")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="写 benchmarks.md 和 JSON 的文件夹")
    args = ap.parse_args(argv)
    if args.runs < 2:
        ap.error("--runs 至少是 2：只有一轮就估计不了波动。")
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    params = load_chat_model("chat")[0].num_params()
    port = _port()
    url = f"http://127.0.0.1:{port}/v1"
    server = subprocess.Popen([sys.executable, "-m", "course_lib.serve", "--model", "chat", "--port", str(port),
                               "--slots", str(args.slots), "--max-queue", str(max(64, args.requests)),
                               "--threads", str(args.threads)], cwd=ROOT, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit("服务器没有启动起来：先单独运行 python -m course_lib.serve --model chat 看看报什么错。")
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        m = measure(url, levels, args.runs, args.requests, args.max_tokens, log=lambda s: print(s, flush=True))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    result = {"device": "cpu", "machine": f"{platform.machine()}, {os.cpu_count()} 核", "torch": torch.__version__,
              "params": params, "slots": args.slots, "server_threads": args.threads, "requests": args.requests,
              "max_tokens": args.max_tokens, "runs": args.runs, "levels": levels, **m,
              "wall_seconds": time.perf_counter() - t0}
    publish(args.docs, "bench_serve:cpu", result, markdown(result))
    print(markdown(result), flush=True)
    return result


if __name__ == "__main__":
    main()
