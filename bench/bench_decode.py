"""解码速度基准：course_lib 的一个解码引擎（不编译 / 编译、有无 KV 缓存、批量）对比 transformers 的 generate。

模型：参考基座模型 assets/base_model（第 05 章的配方；transformers 那边用 course_lib.hf.export_hf 导出的同一份权重）。
每一方都用同一个提示贪心生成 --new-tokens 个 token（不在 eos 处停），**计时之前先核对生成的 token 完全相同**：
- course_lib（KV 缓存，不编译）：model.stream(...)；
- course_lib（编译）：model.stream(..., compile=True)——torch.compile 编译的一步 + 固定大小的 KV 缓存；
  第一次调用要编译，这段「预热」时间单独报告，不算进速度；
- transformers：LlamaForCausalLM.generate(do_sample=False)，默认的（动态）KV 缓存；
- 不用缓存：model.stream(..., use_cache=False)，每步整段重算；和缓存的比值在「生成到整个窗口」时量（--window-tokens）；
- 批量：BatchDecoder 同时解码 1、4、8 条同样的提示，总吞吐量（token/s）。
每一轮各方各跑一次、先后顺序逐轮轮换；比值只用同一轮的两个数相除，报告中位数、范围和 95 % 区间（_report）。
目标（issue 15）：编译后 ≥ transformers 的 1.5 倍；缓存 ≥ 不用缓存的 5 倍（生成到整个窗口）。
结果写进 docs/benchmarks.md 里 <!-- bench_decode:cpu --> 一节和 docs/bench_decode_cpu.json。

    python bench/bench_decode.py               # 默认 5 轮，200 个 token，1 个线程
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _report import publish, ratio_summary  # noqa: E402

from course_lib.generate import GREEDY, BatchDecoder  # noqa: E402
from course_lib.hf import export_hf  # noqa: E402
from course_lib.reference import load_reference, reference_dir  # noqa: E402

PROMPT = "今天的天气"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="计入统计的轮数（至少 2）")
    ap.add_argument("--new-tokens", type=int, default=200, help="每次贪心生成几个 token")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch 的线程数（默认 1：单个 token 的小矩阵乘法多线程反而慢）")
    ap.add_argument("--batches", default="1,4,8", help="批量解码测哪几个批大小")
    ap.add_argument("--no-compile", action="store_true", help="不测编译（没有 C 编译器的机器上）")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="写 benchmarks.md 和 JSON 的文件夹")
    args = ap.parse_args(argv)
    if args.runs < 2:
        ap.error("--runs 至少是 2：只有一轮就估计不了波动。")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, tok = load_reference()
    model.eval()
    prompt = [tok.bos_id] + tok.encode(PROMPT)
    n, window = args.new_tokens, model.config.max_seq_len
    if len(prompt) + n > window:
        ap.error(f"提示 {len(prompt)} + 生成 {n} 个 token 超过了窗口 {window}：请调小 --new-tokens。")
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = export_hf(model, Path(tmp) / "hf", sp_model_path=reference_dir() / "tokenizer.model")
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    # 不在 eos 处停、也不压低 eos（min_new_tokens 会把 eos 的分数设成 -inf，改变贪心的选择）：和 course_lib 一样只看分数
    hf.generation_config.eos_token_id = None
    full = window - len(prompt)                 # 生成到整个窗口：比较有无缓存

    def course(k=n, **kw):
        return lambda: list(model.stream(prompt, k, temperature=0.0, **kw))

    def transformers_generate():
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_id)
        return out[0, len(prompt):].tolist()

    def batched(b):
        def run():
            dec = BatchDecoder(model, slots=b)
            for _ in range(b):
                dec.add(prompt, n, GREEDY)
            out = []
            while dec.active or dec.pending:
                out += [t for _, t, _ in dec.step()]
            return out
        return run

    batch_sizes = [int(x) for x in args.batches.split(",") if x.strip()]
    runners = {"course_lib": course(), "transformers": transformers_generate,
               "course_lib 整个窗口": course(full), "不用缓存 整个窗口": course(full, use_cache=False),
               **{f"批量 {b}": batched(b) for b in batch_sizes}}
    warmup = {}
    if not args.no_compile:
        t0 = time.perf_counter()
        course(compile=True)()                    # 第一次调用：编译
        warmup["compile_seconds"] = time.perf_counter() - t0
        runners["course_lib 编译"] = course(compile=True)
        runners["编译 整个窗口"] = course(full, compile=True)
    want, want_full = runners["course_lib"](), runners["course_lib 整个窗口"]()
    same = {}
    for name, run in runners.items():
        got = run()
        if name.startswith("批量"):
            b = int(name.split()[1])
            same[name] = got == [t for t in want for _ in range(b)]      # 每一步 b 条序列各出一个 token
        else:
            same[name] = got == (want_full if "整个窗口" in name else want)
    print("与 course_lib（不编译）的 token 相同：", same, flush=True)
    if not all(same.values()):
        raise SystemExit(f"token 不同，不计时：{[k for k, v in same.items() if not v]}")
    tokens = {name: (full if "整个窗口" in name else n) * (int(name.split()[1]) if name.startswith("批量") else 1)
              for name in runners}
    tok_s = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.runs):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            runners[name]()
            tok_s[name].append(tokens[name] / (time.perf_counter() - t0))
        print(f"第 {r + 1}/{args.runs} 轮：" + "，".join(f"{k} {v[-1]:,.0f}" for k, v in tok_s.items()), flush=True)

    def ratios(a, b):
        return [x / y for x, y in zip(tok_s[a], tok_s[b])]
    pairs = {"course_lib ÷ transformers": ("course_lib", "transformers"),
             "缓存 ÷ 不用缓存（整个窗口）": ("course_lib 整个窗口", "不用缓存 整个窗口"),
             **{f"批量 {b} ÷ 批量 1": (f"批量 {b}", "批量 1") for b in batch_sizes if b != 1}}
    if not args.no_compile:
        pairs = {"编译 ÷ transformers": ("course_lib 编译", "transformers"),
                 "编译 ÷ 不编译": ("course_lib 编译", "course_lib"),
                 "编译 ÷ 不用缓存（整个窗口）": ("编译 整个窗口", "不用缓存 整个窗口"), **pairs}
    all_ratios = {k: ratios(*v) for k, v in pairs.items()}
    result = {"device": "cpu", "machine": f"{platform.machine()}, {args.threads} 线程", "torch": torch.__version__,
              "params": model.num_params(), "prompt_tokens": len(prompt), "new_tokens": n, "window_tokens": full,
              "runs": args.runs, "same_tokens": same, "tok_s": tok_s,
              "median_tok_s": {k: statistics.median(v) for k, v in tok_s.items()},
              "ratios": all_ratios, "ratio": {k: ratio_summary(v) for k, v in all_ratios.items()},
              **warmup, "wall_seconds": time.perf_counter() - t_start}
    publish(args.docs, "bench_decode:cpu", result, markdown(result))
    print(markdown(result), flush=True)
    return result


def markdown(r: dict) -> str:
    lines = [f"模型：参考基座模型（{r['params'] / 1e6:.2f} M 参数），torch {r['torch']}，{r['machine']}；提示 {r['prompt_tokens']} 个 token，"
             f"贪心生成 {r['new_tokens']} 个（「整个窗口」：{r['window_tokens']} 个，生成到上下文窗口满），{r['runs']} 轮，"
             f"先后顺序逐轮轮换；计时前核对了所有方式生成的 token 完全相同。整个运行用了 {r['wall_seconds'] / 60:.1f} 分钟。", ""]
    if "compile_seconds" in r:
        lines += [f"编译的预热（第一次调用 compile=True，不计入速度）：{r['compile_seconds']:.0f} 秒。", ""]
    lines += ["| 方式 | tokens/s（中位数） |", "|---|---|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in r["median_tok_s"].items()]
    lines += ["", "| 比值（同一轮的两个数相除） | 中位数 | 95 % 区间 | 结论 |", "|---|---|---|---|"]
    for k, q in r["ratio"].items():
        lines.append(f"| {k} | ×{q['median']:.2f} | [{q['ci_low']:.2f}, {q['ci_high']:.2f}] | {q['verdict']} |")
    goals = []
    for key, goal in (("编译 ÷ transformers", 1.5), ("缓存 ÷ 不用缓存（整个窗口）", 5.0), ("编译 ÷ 不用缓存（整个窗口）", 5.0)):
        if key in r["ratio"]:
            low = r["ratio"][key]["ci_low"]
            goals.append(f"「{key} ≥ {goal}」：区间下限 {low:.2f}，{'达到' if low >= goal else '没有达到'}")
    return "\n".join(lines + (["", "目标（issue 15）：" + "；".join(goals) + "。"] if goals else []))


if __name__ == "__main__":
    main()
