"""小规模的缩放实验（scaling sweep）：几个模型大小 × 几个 token 预算，各训一遍，量损失和花费。

参考基座模型的大小就是这样选的（python -m course_lib.scaling，结果在 docs/scaling.json / docs/scaling.md）：

1. 每个 (大小, 预算) 单独训练一次，学习率按自己的步数走完整的余弦，和正式训练一样；
2. 在固定的验证窗口上量损失（nats/token），记录参数量、token 数、训练秒数（→ 这台机器上每种大小的吞吐量）；
3. 拟合 Chinchilla 的形式 L(N, D) = E + A / N^α + B / D^β（Hoffmann 等 2022）。九个点定不住五个参数，所以
   α、β 用论文的值（0.34、0.28），只拟合 E、A、B（线性最小二乘）；
4. 用量到的吞吐量换算：正式训练给定的秒数里，每种大小能读多少 token，预测的损失最低的那个就是选择。

外推到比实验大几十倍的预算只是粗略的指引，报告里照实写出来。
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

ALPHA, BETA = 0.34, 0.28      # Hoffmann 等（2022）拟合出的指数
SIZES = {                     # 名字 → (dim, n_layers, n_heads, n_kv_heads)
    "xs": (128, 4, 4, 2),
    "s": (192, 6, 6, 2),
    "m": (256, 6, 8, 2),
    "l": (256, 8, 8, 2),
}
SWEEP_SIZES = ("xs", "s", "m")
BUDGETS = (100_000, 200_000, 400_000)   # 每个大小训练的 token 数
SWEEP_BATCH = dict(batch_size=8, grad_accum_steps=1)   # 每步 8 × 256 = 2,048 token：小预算也有上百步
EVAL_WINDOWS = 64
# 这次实验分不出高下时人为的选择和理由（写进 docs/scaling.md）。参考基座模型就是按它训练的：
# python -m course_lib.reference（REFERENCE_CONFIG 用的就是 size_config(CHOICE)，见 assets/base_model/config.json）
CHOICE = "s"
CHOICE_REASON = ("实测的几个大小预测损失相差不到拟合的均方根残差，靠这次实验分不出高下，所以按另外三条理由选：第 06–09 章要在 "
                 "2 核 CPU 上几分钟内对基座模型做 SFT、LoRA、量化和评测，s 每个 token 的计算明显比 m 少；知识测评要模型记住"
                 "读过几遍的原文，xs 的非嵌入参数最少、记忆容量最小；s 在计划的时间里能把语料读一遍多一点，「见过」的考题原文"
                 "每遍读 UPWEIGHT 次。")
PLANNED_SECONDS = 4800.0   # 正式训练打算用的秒数


def size_config(name: str) -> dict:
    if name not in SIZES:
        raise ValueError(f"不认识的模型大小 {name!r}。可选：{', '.join(SIZES)}。")
    dim, n_layers, n_heads, n_kv = SIZES[name]
    return dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv)


NEWS_CHARS = 60_000


def news_bpc(model, tok, block_size: int = 256) -> float:
    """新闻验证集开头约 NEWS_CHARS 个字上的 bits per character（按不重叠窗口，和 evaluate_loss 一样）。"""
    import torch

    from .data import load_corpus
    from .losses import evaluate_loss
    text = load_corpus("news", "val")[:NEWS_CHARS]
    ids = torch.tensor(tok.encode(text))
    n = (len(ids) - 1) // block_size * block_size
    nats = evaluate_loss(model, ids[:n + 1], block_size)
    chars = len(tok.decode(ids[:n].tolist()))
    return nats * n / chars / math.log(2)


def fit(points: list[dict], key: str = "loss") -> dict:
    """points 里每个有 params、tokens、key（默认 loss）：固定 α、β，最小二乘拟合 E、A、B。返回系数和每个点的残差。"""
    X = np.array([[1.0, p["params"] ** -ALPHA, p["tokens"] ** -BETA] for p in points])
    y = np.array([p[key] for p in points])
    (E, A, B), *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ np.array([E, A, B])
    return {"E": float(E), "A": float(A), "B": float(B), "alpha": ALPHA, "beta": BETA,
            "rmse": float(np.sqrt(np.mean(resid ** 2))), "max_abs_residual": float(np.abs(resid).max())}


def predict(coef: dict, params: float, tokens: float) -> float:
    return coef["E"] + coef["A"] * params ** -coef["alpha"] + coef["B"] * tokens ** -coef["beta"]


def run_sweep(work: str | Path, corpus: str = "course", sizes=SWEEP_SIZES, budgets=BUDGETS, base: dict | None = None,
              say=print) -> list[dict]:
    """训练 sizes × budgets 个模型（分词器只训一次，所有模型共用），返回每次的结果。已经做完的从 result.json 读回。"""
    from .checkpoint import load_model
    from .cli.pretrain import _load_or_train_tokenizer, pretrain
    from .losses import evaluate_loss
    from .reference import REFERENCE_CONFIG
    from .token_data import load_token_bin, prepare_pretraining_data

    work = Path(work)
    base = {**REFERENCE_CONFIG, "corpus": corpus, **(base or {})}
    tok = _load_or_train_tokenizer(work / "tokenizer", corpus, base["vocab_size"], base["tokenizer_chars"], say)
    val = load_token_bin(prepare_pretraining_data(tok, corpus=corpus, progress=False)["val"], tok)
    results = []
    for name in sizes:
        for budget in budgets:
            run = work / f"{name}_{budget}"
            done = run / "result.json"
            if done.exists():
                r = json.loads(done.read_text(encoding="utf-8"))
                if "news_bpc" not in r:   # 旧的结果没有新闻的 bpc：用保存的模型补上
                    r["news_bpc"] = round(news_bpc(load_model(run / "model").eval(), tok), 4)
                    done.write_text(json.dumps(r, ensure_ascii=False), encoding="utf-8")
                results.append(r)
                continue
            if run.exists():
                shutil.rmtree(run)   # 上次没做完：从头再来（每次只有几分钟）
            (run / "tokenizer").mkdir(parents=True)
            for f in (work / "tokenizer").iterdir():
                shutil.copyfile(f, run / "tokenizer" / f.name)
            steps = budget // (SWEEP_BATCH["batch_size"] * SWEEP_BATCH["grad_accum_steps"] * base["block_size"])
            p = {**base, **size_config(name), **SWEEP_BATCH, "max_steps": steps, "warmup_steps": max(1, steps // 10),
                 "eval_interval": steps, "eval_iters": 4, "checkpoint_interval": steps}
            t0 = time.time()
            model_dir = pretrain(p, run, profile=f"sweep-{name}", title=f"缩放实验 {name} × {budget:,} token")
            wall = time.time() - t0
            model = load_model(model_dir).eval()
            hist = json.loads((run / "history.json").read_text(encoding="utf-8"))
            r = {"size": name, **size_config(name), "params": model.num_params(),
                 "non_embedding_params": model.num_params(non_embedding=True),
                 "tokens": steps * SWEEP_BATCH["batch_size"] * base["block_size"], "steps": steps,
                 "loss": round(evaluate_loss(model, val, base["block_size"], max_windows=EVAL_WINDOWS), 5),
                 "train_seconds": round(hist["seconds"], 2), "wall_seconds": round(wall, 1),
                 "tokens_per_sec": round(hist["tokens_per_sec"], 1)}
            r["flops"] = 6 * r["params"] * r["tokens"]
            r["news_bpc"] = round(news_bpc(model, tok), 4)
            done.write_text(json.dumps(r, ensure_ascii=False), encoding="utf-8")
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
            say(f"  {name} × {budget:,} token：损失 {r['loss']:.4f}，{r['tokens_per_sec']:,.0f} token/秒")
            results.append(r)
    return results


def choose(results: list[dict], seconds: float, candidates=tuple(SIZES)) -> dict:
    """拟合 → 对每个候选大小：seconds 秒能读多少 token、预测损失多少；返回整张表和选出的大小。

    没进实验的大小（例如 l），吞吐量按「每 token 的计算量 ∝ 参数量」从最接近的实验大小换算。
    """
    from .llama import Llama, LlamaConfig
    from .reference import REFERENCE_CONFIG

    coef = fit(results)
    news = fit(results, "news_bpc")
    speed = {}
    for r in results:
        speed.setdefault(r["size"], []).append(r["tokens_per_sec"])
    measured = {k: (float(np.median(v)), next(r["params"] for r in results if r["size"] == k)) for k, v in speed.items()}
    table = []
    vocab = REFERENCE_CONFIG["vocab_size"]
    for name in candidates:
        c = size_config(name)
        n = Llama(LlamaConfig(vocab_size=vocab, max_seq_len=REFERENCE_CONFIG["block_size"], tie_weights=True, **c)).num_params()
        if name in measured:
            tps, how = measured[name][0], "实测"
        else:
            ref = min(measured, key=lambda k: abs(math.log(measured[k][1] / n)))
            tps, how = measured[ref][0] * measured[ref][1] / n, f"由 {ref} 按参数量换算"
        tokens = tps * seconds
        table.append({"size": name, **c, "params": n, "tokens_per_sec": round(tps, 1), "speed_from": how,
                      "tokens": int(tokens), "predicted_loss": round(predict(coef, n, tokens), 4),
                      "predicted_news_bpc": round(predict(news, n, tokens), 3)})
    best = min(table, key=lambda t: t["predicted_loss"])
    # 预测损失和最好的那个相差不到拟合的均方根残差：这些大小靠这次实验分不出高下
    tied = [t["size"] for t in table if t["predicted_loss"] - best["predicted_loss"] <= coef["rmse"]]
    return {"fit": coef, "news_fit": news, "seconds": seconds, "candidates": table, "fit_choice": best["size"],
            "indistinguishable": tied}


def render_markdown(report: dict) -> str:
    """docs/scaling.md：实验表、拟合、每个候选大小的预测，全部来自 report（scaling.json）。"""
    f, n = report["fit"], report["news_fit"]
    lines = ["# 缩放实验：参考基座模型的大小是怎么选的", "",
             f"由 `python -m course_lib.scaling` 生成（{report['built']}，{report['machine']}）。语料 `{report['corpus']}` 的 "
             f"train 划分；每个 (大小, 预算) 单独训练一次，余弦学习率走完自己的步数，每步 {report['batch_tokens']:,} 个 token；"
             f"损失是验证集前 {EVAL_WINDOWS} 个 256-token 窗口上的平均交叉熵（nats/token）。", "",
             "![损失 vs 计算量](scaling.png)", "",
             "| 大小 | dim × 层数 | 参数量 | token 数 | 验证损失 | 新闻 bpc | 训练秒数 | token/秒 |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["runs"], key=lambda r: (r["params"], r["tokens"])):
        lines.append(f"| {r['size']} | {r['dim']} × {r['n_layers']} | {r['params'] / 1e6:.2f} M | {r['tokens']:,} | "
                     f"{r['loss']:.4f} | {r['news_bpc']:.3f} | {r['train_seconds']:.0f} | {r['tokens_per_sec']:,.0f} |")
    lines += ["", f"拟合 L(N, D) = E + A / N^{f['alpha']} + B / D^{f['beta']}（指数取 Hoffmann 等 2022 的值，只拟合 E、A、B）："
              f"E = {f['E']:.3f}，A = {f['A']:.4g}，B = {f['B']:.4g}；{len(report['runs'])} 个点的均方根残差 {f['rmse']:.3f}，"
              f"最大残差 {f['max_abs_residual']:.3f} nats。同样的形式拟合新闻验证文本的 bits per character（前 "
              f"{NEWS_CHARS:,} 字）：E = {n['E']:.3f}，A = {n['A']:.4g}，B = {n['B']:.4g}，均方根残差 {n['rmse']:.3f} bits。", "",
              f"正式训练打算用 {report['seconds'] / 3600:.2f} 小时（2 核 CPU）。每个候选大小在这段时间里能读的 token 数和预测的损失：", "",
              "| 大小 | dim × 层数 | 参数量 | token/秒 | 能读的 token | 约几遍语料 | 预测损失 | 预测新闻 bpc |",
              "|---|---|---|---|---|---|---|---|"]
    for t in report["candidates"]:
        mark = " **← 选中**" if t["size"] == report["choice"] else ""
        lines.append(f"| {t['size']} | {t['dim']} × {t['n_layers']} | {t['params'] / 1e6:.2f} M | {t['tokens_per_sec']:,.0f}（{t['speed_from']}）| "
                     f"{t['tokens'] / 1e6:.1f} M | {t['tokens'] / report['train_tokens']:.1f} | {t['predicted_loss']:.3f} | "
                     f"{t['predicted_news_bpc']:.2f}{mark} |")
    tied = report["indistinguishable"]
    lines += ["", f"预测损失最低的是 {report['fit_choice']}；"
              + (f"但 {'、'.join(tied)} 的预测值相差不到拟合的均方根残差，这次实验分不出它们的高下。" if len(tied) > 1 else "")]
    if report["choice"] != report["fit_choice"] or report["reason"]:
        lines += ["", f"**选定 {report['choice']}**：{report['reason']}"]
    lines += ["", "诚实地说：实验里最大的预算只有正式训练的几十分之一，外推只是粗略的指引；指数是借来的，不是在这里测出来的。"
              "选择还受两条硬约束：权重（float16）不超过 16 MB，读的遍数不超过几遍。", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """损失 vs 计算量（6·N·D 次浮点运算）：每种大小一条线，三个预算三个点。"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_open
    from .plotting import setup_chinese_font
    setup_chinese_font()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for size in dict.fromkeys(r["size"] for r in report["runs"]):
        rs = sorted((r for r in report["runs"] if r["size"] == size), key=lambda r: r["flops"])
        ax.plot([r["flops"] for r in rs], [r["loss"] for r in rs], "o-",
                label=f"{size}（{rs[0]['params'] / 1e6:.1f} M 参数）")
    ax.set_xscale("log")
    ax.set_xlabel("计算量（FLOPs ≈ 6 × 参数量 × token 数）")
    ax.set_ylabel("验证损失（nats/token）")
    ax.set_title("缩放实验：同样的计算量，哪个大小的损失最低")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import platform

    from .data import load_corpus
    from .files import atomic_write_json, atomic_write_text
    from .paths import repo_root, runs_dir
    ap = argparse.ArgumentParser(description="缩放实验：几个模型大小 × 几个 token 预算，拟合后选参考模型的大小。")
    ap.add_argument("--work", default=str(runs_dir() / "scaling"))
    ap.add_argument("--corpus", default="course")
    ap.add_argument("--seconds", type=float, default=PLANNED_SECONDS, help="正式训练打算用的秒数")
    ap.add_argument("--out", default=str(repo_root() / "docs"))
    ap.add_argument("--choice", default=CHOICE, help="实验分不出高下时，人为选定的大小（空 = 预测损失最低的）")
    ap.add_argument("--reason", default=None, help="人为选定的理由，写进报告（默认 CHOICE_REASON）")
    a = ap.parse_args(argv)
    results = run_sweep(a.work, a.corpus)
    from .token_data import load_token_bin, prepare_pretraining_data
    from .tokenizer import BPETokenizer
    tok = BPETokenizer.load(Path(a.work) / "tokenizer")
    train_tokens = len(load_token_bin(prepare_pretraining_data(tok, corpus=a.corpus, progress=False)["train"], tok))
    report = {"runs": results, **choose(results, a.seconds), "corpus": a.corpus, "budgets": list(BUDGETS),
              "train_tokens": train_tokens, "train_chars": len(load_corpus(a.corpus, "train")),
              "batch_tokens": SWEEP_BATCH["batch_size"] * SWEEP_BATCH["grad_accum_steps"] * 256,
              "machine": f"{platform.machine()}，{os.cpu_count()} 核", "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["choice"] = a.choice or report["fit_choice"]
    from .knowledge import UPWEIGHT
    report["reason"] = (a.reason if a.reason is not None else CHOICE_REASON).replace("UPWEIGHT", str(UPWEIGHT))
    if report["choice"] not in SIZES:
        raise SystemExit(f"--choice 只能是 {', '.join(SIZES)} 之一，收到 {a.choice!r}。")
    out = Path(a.out)
    atomic_write_json(out / "scaling.json", report)
    plot(report, out / "scaling.png")
    atomic_write_text(out / "scaling.md", render_markdown(report))
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
