"""课程的参考基座模型（reference base checkpoint）：第 06–09 章默认从它开始。

一条命令重新训练并发布它（2 核 CPU 约 75 分钟；有 GPU 时几分钟；实现在 course_lib/cli/reference.py）：

    python -m course_lib.reference            # 训练 → 在整个验证集上评估 → 发布到 assets/base_model/
    python -m course_lib.reference --max_steps 20 --out /tmp/ref   # 快速试跑（覆盖任何一项配置）

训练语料是 course（新闻 + 评论 + 成语 + 古诗文 + 字典 + 歇后语，名篇和测评「见过」一半的原文读 8 遍，见
course_lib.knowledge）的 train 划分：各个 test 划分由 data 模块固定下来，从不进入任何语料，所以第 06–08 章在 test
上的评测，基座模型从没见过考题。大小由缩放实验选出（course_lib.scaling，docs/scaling.md）。发布的文件夹里有：

    model.safetensors   权重（float16，约 7 MB）        config.json   模型结构 + 训练配方 + 结果
    tokenizer.model / tokenizer_meta.json  分词器（第 05 章的 BPE）
    history.json / train_log.jsonl   完整的损失历史与每次运行的摘要      loss.png   损失曲线
    metrics.json        整个验证集上的损失与困惑度（用发布的 float16 权重实测）、参数量、速度、耗时
    README.md / report_base.md / report_base.json   模型卡与成绩单（course_lib.eval）
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_model
from .files import read_json
from .paths import repo_root
from .tokenizer import BPETokenizer

# 训练配方。约 3.6 M 参数（共享输入输出嵌入）；每步 16 × 2 × 256 = 8,192 个 token，2200 步 ≈ 18 M token（course 语料
# 约 1.2 遍）。大小来自缩放实验（course_lib.scaling.CHOICE）；上一版（mix 语料、dim 256、800 步）的成绩单在 docs/report_base_v1.md。
REFERENCE_CONFIG = dict(
    corpus="course", tokenizer_chars=None, vocab_size=6400, block_size=256, dim=192, n_layers=6, n_heads=6,
    n_kv_heads=2, tie_weights=True, batch_size=16, grad_accum_steps=2, max_steps=2200, lr=1.5e-3,
    min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1, grad_clip=1.0, eval_interval=200, eval_iters=20,
    checkpoint_interval=200, compile=False, seed=1337,
)
HEAD_WINDOWS = 32
PUBLISHED_FILES = ("model.safetensors", "config.json", "tokenizer.model", "tokenizer_meta.json", "history.json",
                   "train_log.jsonl", "loss.png", "metrics.json", "README.md")


def reference_dir() -> Path:
    """发布的参考模型所在的文件夹（仓库里的 assets/base_model）。"""
    root = repo_root()
    if root is None:
        raise FileNotFoundError("找不到课程仓库，也就找不到 assets/base_model。请在课程仓库里 pip install -e . 后使用。")
    return root / "assets" / "base_model"


def load_reference(device: str | torch.device = "cpu"):
    """读取参考基座模型，返回 (model, tokenizer)。model 是 float32 的 Llama，处于 eval 模式。"""
    folder = reference_dir()
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder} 里没有参考模型。它随仓库一起发布；如果被删掉了，"
                                "可以用 `git checkout assets/base_model` 恢复，或运行 `python -m course_lib.reference` 重新训练。")
    model = load_model(folder, device=device).eval()
    return model, BPETokenizer.load(folder)


def profile_base_dir(profile: str | None = None, quiet: bool = False) -> Path:
    """第 06–09 章从哪个基座模型出发。tiny 档：发布的参考模型（assets/base_model）。small / full 档：本档第 05 章
    预训练出的模型（data/runs/05_pretraining/model，按本档的配置在 course 语料上训练，比 CPU 参考模型大、读得多）；
    还没有运行过第 05 章时退回参考模型，并说明怎样换成本档自己的基座。"""
    from .paths import runs_dir
    from .profiles import active_profile
    name = active_profile(profile)
    if name != "tiny":
        own = runs_dir() / "05_pretraining" / "model"
        if (own / "config.json").exists() and read_json(own / "config.json", "第 05 章的模型").get("profile") == name:
            return own
        if not quiet:
            print(f"提示：{name} 档还没有第 05 章预训练的模型（{own}），先用 CPU 上训练的参考模型 assets/base_model。"
                  f"在 {name} 档运行一遍第 05 章后，第 06–09 章会改用本档自己的基座。", flush=True)
    return reference_dir()


def load_profile_base(device: str | torch.device = "cpu", profile: str | None = None):
    """profile_base_dir() 里的基座模型，返回 (model, tokenizer)；tiny 档就是 load_reference()。"""
    folder = profile_base_dir(profile)
    if folder == reference_dir():
        return load_reference(device)
    return load_model(folder, device=device).eval(), BPETokenizer.load(folder)


def reference_metrics() -> dict:
    """发布时实测的数字（metrics.json）。"""
    return read_json(reference_dir() / "metrics.json", "参考模型的实测数字",
                     "它随仓库一起发布：git checkout assets/base_model 可以恢复。")


if __name__ == "__main__":  # python -m course_lib.reference：实现在 course_lib/cli/reference.py
    from course_lib.cli.reference import main
    raise SystemExit(main())
