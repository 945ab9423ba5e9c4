"""练习的自动批改：把你的答案交给对应的 check_* 函数，它会告诉你对不对，并给出提示。

每个函数打印一行中文结论，返回 True / False。参考答案在 notebooks/solutions/ 里。
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _report(ok: bool, right: str, wrong: str) -> bool:
    print(("✅ 正确！" + right) if ok else ("❌ 还不对。" + wrong))
    return ok


# ---------------------------------------------------------------- 第 01 章
def check_01_uniform_nll(answer: float, vocab_size: int) -> bool:
    """练习：一个对所有 V 个字一视同仁的模型，平均负对数似然是多少？"""
    truth = math.log(vocab_size)
    return _report(abs(float(answer) - truth) < 1e-3, f"ln {vocab_size} = {truth:.4f}，这是「什么都没学」的基线。",
                   "提示：每个字的概率都是 1/V，-ln(1/V) 等于多少？")


def check_01_best_smoothing(answer: float, train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int,
                            grid=(0.001, 0.01, 0.1, 1.0)) -> bool:
    """练习：在 grid 里，哪个平滑系数 α 让计数模型在验证集上的 NLL 最低？"""
    from .bigram import bigram_counts, bigram_nll, bigram_probs
    counts = bigram_counts(train_ids, vocab_size)
    scores = {a: bigram_nll(bigram_probs(counts, a), val_ids) for a in grid}
    best = min(scores, key=scores.get)
    table = "，".join(f"α={a}: {s:.3f}" for a, s in scores.items())
    return _report(float(answer) == best, f"{table}。", f"在验证集上逐个算一遍 NLL 再比较（不要用训练集）。")


# ---------------------------------------------------------------- 第 02 章
def check_02_attention_params(answer: int, n_embd: int, bias: bool = True) -> bool:
    """练习：CausalSelfAttention(n_embd, n_head) 有多少个参数？（与 n_head 无关！）"""
    from .attention import CausalSelfAttention
    truth = sum(p.numel() for p in CausalSelfAttention(n_embd, 1, bias=bias).parameters())
    return _report(int(answer) == truth, f"4·C² + 4·C = {truth:,}（C={n_embd}），头数只决定怎么切分，不改变参数量。",
                   "提示：c_attn 是 C→3C 的线性层，c_proj 是 C→C 的线性层，别忘了偏置。")


def check_02_bidirectional(fn) -> bool:
    """练习：写一个不带因果掩码的注意力 fn(q, k, v)，它应该等于 SDPA(is_causal=False)。"""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    try:
        ours = fn(q, k, v)
    except Exception as e:  # 学习者的代码出错：告诉他错在哪
        return _report(False, "", f"你的函数报错了：{type(e).__name__}: {e}")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    ok = ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-5)
    return _report(ok, "双向注意力就是 BERT 这类编码器用的注意力。",
                   "提示：去掉掩码那一步，其余（缩放、softmax、乘 V）都不变。")


# ---------------------------------------------------------------- 第 03 章
def check_03_gpt_params(answer: int, cfg) -> bool:
    """练习：按公式算出 GPT(cfg) 的参数量（权重共享时 lm_head 不重复计）。"""
    from .gpt import GPT
    truth = GPT(cfg).num_params()
    return _report(int(answer) == truth, f"一共 {truth:,} 个参数。",
                   f"提示：嵌入 V·C + T·C；每层 12·C² + 13·C；最后的 LayerNorm 2·C；共享权重时 lm_head 不算。"
                   f"你的答案差了 {int(answer) - truth:+,}。")
