"""GGUF 基准：导出的文件有多大、和 course_lib 差多少，以及 llama.cpp 在 CPU 上解码多快。

模型：参考对话模型 assets/chat_model。导出 f32 / f16 / q8_0 / q4_0 四种 GGUF，然后：
- 质量：几条对话提示和几段验证集文本上，course_lib 的 logits 与 transformers（from_pretrained(gguf_file=)）、
  llama.cpp（llama-cpp-python，logits_all）读出的 logits 比：最大绝对差、top-1 一致率、平均 KL(course_lib ‖ GGUF)。
  参考对话模型以 fp16 发布，f16 与 f32 逐位相同；所以另外把权重乘 (1 + 1e-3·N(0,1)) 再导出一次，看 f16 真正的误差。
- 速度：同一个提示贪心生成 --new-tokens 个 token（不在回复结尾停），course_lib（KV 缓存）、transformers generate
  （同一份权重导出成 HF 格式）、llama.cpp（1 个线程；每种 GGUF）轮流计时，先后顺序逐轮轮换；
  每轮以 course_lib 为分母算比值（_report.ratio_summary 给区间和结论）。计时前核对三者的 token 完全相同。
结果写进 docs/benchmarks.md 里 <!-- bench_gguf:cpu --> 一节和 docs/bench_gguf_cpu.json。

    python bench/bench_gguf.py            # 需要 pip install -e '.[deploy]'（llama-cpp-python）
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _report import publish, ratio_summary  # noqa: E402

from course_lib.chat_format import CHAT_TEMPLATE, encode_chat  # noqa: E402
from course_lib.chat_models import chat_model_dir, load_chat_model  # noqa: E402
from course_lib.gguf import TYPES, export_gguf  # noqa: E402
from course_lib.hf import export_hf  # noqa: E402

QUESTIONS = ("计算：23+45=？", "你是谁？", "「画蛇添足」是什么意思？", "判断这条评论的情感是正面还是负面：房间很干净，服务也好。")


def prompts(tok) -> list[list[int]]:
    return [encode_chat([{"role": "user", "content": q}], tok, add_generation_prompt=True) for q in QUESTIONS]


def texts(tok, length: int = 200) -> list[list[int]]:
    """course_lib.eval 量 bpc 用的验证集文档（新闻、古诗文、评论），每个领域取第一篇的前 length 个 token。"""
    from course_lib.eval import BPC_DOMAINS, _bpc_documents
    return [tok.encode(_bpc_documents(d)[0], bos=True)[:length] for d in BPC_DOMAINS]


@torch.no_grad()
def quality(model, rows: list[list[int]], hf=None, llm=None) -> dict:
    worst, agree, total, kl = 0.0, 0, 0, 0.0
    for ids in rows:
        ours = model(torch.tensor([ids]))[0][0].float()
        if hf is not None:
            theirs = hf(torch.tensor([ids])).logits[0].float()
        else:
            llm.reset()
            llm.eval(ids)
            theirs = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
        worst = max(worst, (ours - theirs).abs().max().item())
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += len(ids)
        lp, lq = torch.log_softmax(ours, -1), torch.log_softmax(theirs, -1)
        kl += (lp.exp() * (lp - lq)).sum().item()
    return {"max_abs_diff": worst, "top1": agree / total, "kl": kl / total, "tokens": total}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="速度计入统计的轮数（至少 2）")
    ap.add_argument("--new-tokens", type=int, default=200, help="每次贪心生成几个 token")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="写 benchmarks.md 和 JSON 的文件夹")
    args = ap.parse_args(argv)
    if args.runs < 2:
        ap.error("--runs 至少是 2：只有一轮就估计不了波动。")
    import llama_cpp
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(1)                      # llama.cpp 用 1 个线程（2 线程时偶尔掉速，见 NOTES_LIBS）；三方都用 1 个
    t_start = time.perf_counter()
    model, tok, _ = load_chat_model("chat")
    model.eval()
    perturbed = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.mul_(1 + 1e-3 * torch.randn(p.shape, generator=g))
    tmp = Path(tempfile.mkdtemp())
    rows = prompts(tok) + texts(tok)
    result = {"device": "cpu", "machine": f"{platform.machine()}, 1 线程", "torch": torch.__version__,
              "llama_cpp_python": llama_cpp.__version__, "params": model.num_params(), "rows": len(rows),
              "tokens": sum(map(len, rows)), "files": {}, "quality": {}}
    for name, m in (("shipped", model), ("perturbed", perturbed)):
        for q in TYPES:
            t0 = time.perf_counter()
            path = export_gguf(m, tok, tmp / f"{name}-{q}.gguf", q)
            seconds = time.perf_counter() - t0
            if name == "shipped":
                result["files"][q] = {"bytes": path.stat().st_size, "export_seconds": seconds}
            hf = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=path.name, dtype=torch.float32).eval()
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
            try:
                result["quality"][f"{name}-{q}"] = {"transformers": quality(m, rows, hf=hf),
                                                    "llama.cpp": quality(m, rows, llm=llm)}
            finally:
                llm.close()
            print(f"{name} {q}: {result['quality'][f'{name}-{q}']}", flush=True)

    # ---- 速度
    prompt = rows[0]
    n = args.new_tokens
    hf_dir = export_hf(model, tmp / "hf", sp_model_path=chat_model_dir() / "tokenizer.model", chat_template=CHAT_TEMPLATE)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    llms = {q: llama_cpp.Llama(model_path=str(tmp / f"shipped-{q}.gguf"), n_ctx=256, n_threads=1, verbose=False)
            for q in TYPES}

    def run_course():
        return list(model.stream(prompt, n, temperature=0.0))

    def run_hf():
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, len(prompt):].tolist()

    def llama_runner(q):
        def run():
            out = []
            for t in llms[q].generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                out.append(t)
                if len(out) == n:
                    return out
            return out
        return run

    runners = {"course_lib": run_course, "transformers": run_hf, **{f"llama.cpp {q}": llama_runner(q) for q in TYPES}}
    want = run_course()
    same = {name: run() == want for name, run in runners.items()}
    print("与 course_lib 的 token 相同：", same, flush=True)
    tok_s = {name: [] for name in runners}
    names = list(runners)
    try:
        for r in range(args.runs):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                runners[name]()
                tok_s[name].append(n / (time.perf_counter() - t0))
            print(f"第 {r + 1}/{args.runs} 轮：" + "，".join(f"{k} {v[-1]:,.0f}" for k, v in tok_s.items()), flush=True)
    finally:
        for llm in llms.values():
            llm.close()
    ratios = {k: [a / b for a, b in zip(v, tok_s["course_lib"])] for k, v in tok_s.items() if k != "course_lib"}
    result.update(new_tokens=n, runs=args.runs, same_tokens=same, tok_s=tok_s,
                  median_tok_s={k: statistics.median(v) for k, v in tok_s.items()},
                  ratios=ratios, ratio={k: ratio_summary(v) for k, v in ratios.items()},
                  wall_seconds=time.perf_counter() - t_start)
    publish(args.docs, "bench_gguf:cpu", result, markdown(result))
    print(markdown(result), flush=True)
    return result


def markdown(r: dict) -> str:
    lines = [f"模型：参考对话模型（{r['params'] / 1e6:.2f} M 参数），llama-cpp-python {r['llama_cpp_python']}，"
             f"torch {r['torch']}，{r['machine']}；整个运行用了 {r['wall_seconds'] / 60:.1f} 分钟。",
             "", f"**质量**：{r['rows']} 段输入（对话提示 + 验证集文本，共 {r['tokens']} 个位置），与 course_lib 的 logits 比。"
             "「扰动」= 权重乘 (1 + 1e-3·N(0,1)) 之后再导出（发布的权重恰好都能用 fp16 表示，f16 与 f32 逐位相同）。", "",
             "| 文件 | 大小 | 读法 | 最大 \\|Δlogit\\| | top-1 一致 | KL（nats/token） |", "|---|---|---|---|---|---|"]
    for key, q in r["quality"].items():
        name, t = key.split("-", 1)
        size = f"{r['files'][t]['bytes'] / 1e6:.2f} MB" if name == "shipped" else "—"
        for reader, v in q.items():
            lines.append(f"| {t}{'（扰动）' if name == 'perturbed' else ''} | {size} | {reader} | {v['max_abs_diff']:.2e} | "
                         f"{v['top1']:.1%} | {v['kl']:.2e} |")
    lines += ["", f"**速度**：同一个提示贪心生成 {r['new_tokens']} 个 token，{r['runs']} 轮，先后顺序逐轮轮换；"
              "比值以同一轮的 course_lib 为分母。", "",
              "| | 与 course_lib 的 token 相同 | tokens/s（中位数） | 比值 ÷ course_lib（中位数，95 % 区间） |", "|---|---|---|---|",
              f"| course_lib（KV 缓存） | — | {r['median_tok_s']['course_lib']:,.0f} | 1 |"]
    for k, q in r["ratio"].items():
        lines.append(f"| {k} | {'是' if r['same_tokens'][k] else '否'} | {r['median_tok_s'][k]:,.0f} | "
                     f"×{q['median']:.2f} [{q['ci_low']:.2f}, {q['ci_high']:.2f}]（{q['verdict'].replace('course_lib ', '')}） |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
