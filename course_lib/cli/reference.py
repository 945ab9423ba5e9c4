"""python -m course_lib.reference：一条命令重新训练并发布参考基座模型（配方是 course_lib.reference.REFERENCE_CONFIG）。

训练 → 用发布的 float16 权重在整个验证集上评估 → 写 assets/base_model/（权重、分词器、历史、曲线、metrics.json、模型卡）。
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from ..checkpoint import load_model, save_model
from ..files import atomic_write_json, atomic_write_text, read_json, read_text_utf8
from ..knowledge import NEWS_REPEAT, UPWEIGHT
from ..losses import evaluate_loss
from ..paths import runs_dir
from ..reference import HEAD_WINDOWS, REFERENCE_CONFIG, reference_dir
from ..token_data import load_token_bin, prepare_pretraining_data
from ..tokenizer import BPETokenizer
from .pretrain import check_out, configs, parse_options, parse_overrides, pretrain, run_command


def _parse(argv: list[str]) -> tuple[str | None, dict]:
    options = parse_options(argv)
    out = options.pop("out", None)
    return out, parse_overrides(options, REFERENCE_CONFIG, "--out")


_NEED_OUT = "改动了训练配方时，请用 --out 指定另一个目录，以免覆盖仓库里发布的参考模型 assets/base_model。"


def _work_dir(overrides: dict) -> Path:
    """中间产物（检查点、token 文件）的文件夹：改动了配方的试跑放在另一个文件夹，不碰正式的那一份。"""
    return runs_dir() / ("reference" if not overrides else "reference_custom")


def build_reference(out: str | Path | None = None, work: str | Path | None = None, **overrides) -> Path:
    """训练并发布参考模型。out 默认是 assets/base_model；work 放中间产物（检查点、token 文件），默认 data/runs/reference。

    work 里已有检查点时自动续训（训练被打断后重跑同一条命令即可）。
    """
    p = {**REFERENCE_CONFIG, **overrides}
    if overrides and out is None:
        raise ValueError(_NEED_OUT)
    out = Path(out) if out is not None else reference_dir()
    work = Path(work) if work is not None else _work_dir(overrides)
    model_dir = pretrain(p, work, profile="reference", overrides=overrides, title="参考基座模型")
    tok = BPETokenizer.load(model_dir)
    model = load_model(model_dir)
    meta = read_json(model_dir / "config.json", "模型配置")

    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out, dtype=torch.float16, extra={"step": meta.get("step"), "recipe": p,
                                                        "command": command(overrides, out)})
    tok.save(out)
    for name in ("history.json", "train_log.jsonl", "loss.png"):
        shutil.copyfile(work / name, out / name)

    # 用发布出去的 float16 权重（读回 float32）在整个验证集上评估：报告的数字就是别人拿到的模型的数字
    published = load_model(out).eval()
    val = load_token_bin(prepare_pretraining_data(tok, corpus=p["corpus"], progress=False)["val"], tok)
    t0 = time.time()
    val_loss = evaluate_loss(published, val, p["block_size"])
    logs = [json.loads(line) for line in read_text_utf8(work / "train_log.jsonl").splitlines() if line.strip()]
    tokens_per_step = p["batch_size"] * p["grad_accum_steps"] * p["block_size"]
    metrics = {
        "val_loss": round(val_loss, 4), "val_perplexity": round(math.exp(val_loss), 2),
        # 前 HEAD_WINDOWS 个窗口上的损失：测试用它快速核对发布的权重（整个验证集要算一分钟）
        "val_loss_head": round(evaluate_loss(published, val, p["block_size"], max_windows=HEAD_WINDOWS), 6),
        "head_windows": HEAD_WINDOWS,
        "val_tokens": int(len(val)), "eval_seconds": round(time.time() - t0, 1),
        "params": published.num_params(), "steps": meta.get("step"),
        "tokens_seen": (meta.get("step") or 0) * tokens_per_step,
        "train_seconds": round(sum(r["seconds"] for r in logs), 1),
        "tokens_per_sec": logs[-1]["tokens_per_sec"] if logs else None,
        "device": logs[-1]["device"] if logs else None,
        "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
        "weights_bytes": (out / "model.safetensors").stat().st_size, "tokenizer_fingerprint": tok.fingerprint,
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "README.md", model_card(p, metrics, command(overrides, out)))
    print(f"发布到 {out}：验证集损失 {val_loss:.4f}（困惑度 {math.exp(val_loss):.2f}），"
          f"{metrics['params'] / 1e6:.2f} M 参数，权重 {metrics['weights_bytes'] / 1e6:.1f} MB。")
    return out


CORPUS_NOTES = {
    "mix": "mix = 新闻 + 评论 + 成语；评论和成语的 test 划分从未参与训练",
    "course": "course = mix（新闻 + 评论 + 成语）+ 古诗文 + 字典 + 歇后语；名篇、常用成语和知识测评 seen 半考题的原文"
              "重复 {upweight} 遍，新闻 {news} 遍（见 course_lib.knowledge.course_documents）；所有 test 划分从未参与训练",
}


def command(overrides: dict, out: Path) -> str:
    """复现这个模型的那一条命令。"""
    if not overrides:
        return "python -m course_lib.reference"
    args = " ".join(f"--{k} {v}" for k, v in overrides.items())
    try:
        where = out.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        where = out
    return f"python -m course_lib.reference {args} --out {where}"


def model_card(p: dict, m: dict, cmd: str = "python -m course_lib.reference") -> str:
    """发布文件夹里的 README.md：这个模型是什么、怎么来的、实测多好（数字全部来自 metrics.json）。"""
    hours = m["train_seconds"] / 3600
    if cmd == "python -m course_lib.reference":
        usage = ("from course_lib.reference import load_reference\n"
                 "model, tokenizer = load_reference()      # float32 的 Llama + BPETokenizer")
    else:
        folder = cmd.split("--out ")[-1]
        usage = ("from course_lib.checkpoint import load_model\nfrom course_lib.tokenizer import BPETokenizer\n"
                 f"model, tokenizer = load_model(\"{folder}\").eval(), BPETokenizer.load(\"{folder}\")")
    extra = ("\n\n成绩单（course_lib.eval 的全部测评，带 95 % 区间和基线）：[report_base.md](report_base.md)。"
             "模型大小由一次小的缩放实验选定：[docs/scaling.md](../../docs/scaling.md)。"
             if p["corpus"] == "course" else "")
    return f"""# 课程参考基座模型（reference base checkpoint）

第 05 章预训练流程训练出的中文小 Llama。由 `{cmd}` 一条命令生成，
本文件和 metrics.json 里的数字都是那次运行实测的。

| 项目 | 数值 |
|---|---|
| 结构 | Llama：{p["n_layers"]} 层，{p["dim"]} 维，{p["n_heads"]} 个 q 头 / {p["n_kv_heads"]} 个 kv 头（GQA），上下文 {p["block_size"]}，输入输出嵌入共享 |
| 参数量 | {m["params"]:,}（{m["params"] / 1e6:.2f} M） |
| 分词器 | sentencepiece BPE，词表 {p["vocab_size"]}（含 `<\\|im_start\\|>`、`<\\|im_end\\|>` 等特殊 token） |
| 训练数据 | `{p["corpus"]}` 语料的 train 划分（{CORPUS_NOTES.get(p["corpus"], p["corpus"]).format(upweight=UPWEIGHT, news=NEWS_REPEAT)}） |
| 训练量 | {m["steps"]} 步 × {p["batch_size"] * p["grad_accum_steps"]} 条 × {p["block_size"]} token = {m["tokens_seen"]:,} token |
| 学习率 | 峰值 {p["lr"]}，预热 {p["warmup_steps"]} 步，余弦退火到 {p["lr"] * p["min_lr_ratio"]:.2g}；AdamW，weight decay {p["weight_decay"]} |
| 训练耗时 | {hours:.2f} 小时（{m["device"]}，平均 {m["tokens_per_sec"]:,.0f} token/秒） |
| 验证集损失 | **{m["val_loss"]:.4f}** nats/token（困惑度 {m["val_perplexity"]:.2f}），整个验证集 {m["val_tokens"]:,} 个 token，用发布的 float16 权重实测 |
| 权重文件 | model.safetensors，float16，{m["weights_bytes"] / 1e6:.1f} MB |

```python
{usage}
```

损失曲线：loss.png；完整历史：history.json；每次运行的摘要：train_log.jsonl。{extra}
"""


HELP = """用法：python -m course_lib.reference [--out 目录] [--键 值 ...]

按 course_lib.reference.REFERENCE_CONFIG 训练参考基座模型（2 核 CPU 约 80 分钟），评估后发布到 assets/base_model/。
改动配方（例如 --max_steps 20 快速试跑）时必须用 --out 指定另一个目录。中断后重跑同一条命令会从检查点续训。

可以覆盖的键：{keys}"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--chat" in argv:   # 参考对话模型：见 course_lib/cli/chat_reference.py
        from .chat_reference import main as chat_main
        return chat_main(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(HELP.format(keys=", ".join(sorted(REFERENCE_CONFIG))))
        return 0
    try:
        out, overrides = _parse(argv)
        if overrides and out is None:
            raise ValueError(_NEED_OUT)
        p = {**REFERENCE_CONFIG, **overrides}
        configs(p, p["vocab_size"], runs_dir())  # 设置不合法时现在就报错，不等训练开始
        out = check_out(out) if out is not None else None
    except (ValueError, KeyError) as e:
        print(f"错误：{e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return run_command(lambda: build_reference(out, **overrides), _work_dir(overrides) / "checkpoints")
