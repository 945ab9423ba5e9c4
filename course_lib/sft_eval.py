"""第 06 章的评测：贪心解码每道 test 题（generate_reply），按任务打分（score_reply），汇总成 evaluate_sft 的结果。
第 07、08 章用同一批题、同一个函数比较 LoRA、量化前后的模型。
"""
from __future__ import annotations

import functools
import re
import time
from collections import Counter

from .chat_format import encode_chat, validate_messages
from .device import eval_mode
from .generate import stream
from .sft_data import SENTIMENT_LABELS, _idioms


def generate_reply(model, tokenizer, messages, max_new_tokens: int = 48) -> tuple[str, bool]:
    """贪心解码一条回复：返回 (回复文本, 是否以 <|im_end|> 结束)。messages 的最后一条必须是 user。

    生成用课程共用的 course_lib.generate.decode：course_lib 的 Llama（以及包了 LoRA 的它）和 HFCausalLM 用 KV 缓存，
    其他模型（只要 model(idx) 返回 logits 或 (logits, loss)）每步整段重算。
    """
    prompt = encode_chat(messages, tokenizer, add_generation_prompt=True)
    stop = (tokenizer.im_end_id, tokenizer.eos_id)
    new = list(stream(model, prompt, max_new_tokens, temperature=0.0, stop_ids=stop))
    ended = bool(new) and new[-1] == tokenizer.im_end_id
    body = new[:-1] if new and new[-1] in stop else new
    return tokenizer.decode(body), ended


def char_f1(pred: str, ref: str) -> float:
    """字级 F1：两段文字按字（多重集合）算的精确率与召回率的调和平均。标点和空白不算。"""
    keep = lambda s: Counter(c for c in s if c.isalnum())  # noqa: E731
    p, r = keep(pred), keep(ref)
    common = sum((p & r).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


@functools.lru_cache(maxsize=1)
def _idiom_words() -> frozenset:
    return frozenset(i.word for i in _idioms())


def score_reply(example: dict, reply: str) -> float:
    """一条回复的得分（0–1）。sentiment：只说了对的那个标签；arithmetic：最后一个整数等于答案；
    idiom_pinyin：拼音完全一致（忽略多余空格）；idiom_chain：接的是词典里的成语，并且第一个字是题目成语的最后一个字；
    idiom_meaning / idiom_source / idiom_usage：与参考答案的字级 F1。"""
    _check_example(example, "score_reply 的题目", ("task", "answer") + (
        ("messages",) if isinstance(example, dict) and example.get("task") == "idiom_chain" else ()))
    if not isinstance(reply, str):
        raise TypeError(f"score_reply 的 reply 应该是模型回复的文字（str），收到 {type(reply).__name__}。")
    task, answer = example["task"], example["answer"]
    text = reply.strip()
    if task == "sentiment":
        said = [label for label in SENTIMENT_LABELS if label in text]
        return float(said == [answer])
    if task == "arithmetic":
        numbers = re.findall(r"-?\d+", text)
        return float(bool(numbers) and numbers[-1] == answer)
    if task == "idiom_pinyin":
        return float(" ".join(text.rstrip("。").split()) == " ".join(answer.split()))
    if task == "idiom_chain":
        question = example["messages"][-2]["content"]
        last_char = question.strip()[-1]
        candidate = text.strip("「」。 ")
        return float(candidate in _idiom_words() and candidate[:1] == last_char)
    if answer is None:
        return float("nan")
    return char_f1(text, answer)


def _check_example(example, what: str, need=("task", "messages")) -> None:
    """评测题的格式：{"task": 任务名, "messages": 对话, "answer": 标准答案}，即 build_sft_examples 的结果。"""
    if not isinstance(example, dict) or any(k not in example for k in need):
        raise ValueError(f"{what}应该是 build_sft_examples 返回的那种字典（{{\"task\", \"messages\", \"answer\"}}，"
                         f"缺少 {[k for k in need if not isinstance(example, dict) or k not in example]}），收到 {example!r:.60}。")


IDIOM_ACC_TASKS = ("idiom_pinyin", "idiom_chain")  # idiom_acc 是这两种题的平均正确率（都是对/错两种结果）


def evaluate_sft(model, tokenizer, examples, max_new_tokens: int = 48) -> dict:
    """在 examples（通常是 build_sft_examples("test")）上贪心解码并打分，返回：

    - format_ok：回复在 max_new_tokens 之内以 <|im_end|> 结束的比例（所有题目）；
    - sentiment_acc、idiom_acc（拼音完全正确与接龙合法的平均）、arith_acc（精确匹配）：0–1 之间的比例；
    - idiom_meaning_f1：释义题的平均字级 F1；
    - tasks：{任务: {"n", "score", "format_ok"}}；n：题目总数；seconds：耗时；
    - samples：[{task, prompt, reply, answer, score, ended}]，每条题目一条，方便展示。
    """
    t0 = time.perf_counter()
    samples = []
    with eval_mode(model):
        for i, ex in enumerate(examples):
            _check_example(ex, f"evaluate_sft 的第 {i + 1} 道题")
            validate_messages(ex["messages"])
            messages = ex["messages"][:-1] if ex["messages"][-1]["role"] == "assistant" else ex["messages"]
            reply, ended = generate_reply(model, tokenizer, messages, max_new_tokens)
            score = score_reply(ex, reply) if ex.get("answer") is not None else float("nan")
            samples.append({"task": ex["task"], "prompt": messages[-1]["content"], "reply": reply,
                            "answer": ex.get("answer"), "score": score, "ended": ended})
    tasks = {}
    for task in dict.fromkeys(s["task"] for s in samples):
        group = [s for s in samples if s["task"] == task]
        scores = [s["score"] for s in group if s["score"] == s["score"]]
        tasks[task] = {"n": len(group), "score": sum(scores) / len(scores) if scores else float("nan"),
                       "format_ok": sum(s["ended"] for s in group) / len(group)}

    def mean_over(names):
        scores = [s["score"] for s in samples if s["task"] in names]
        return sum(scores) / len(scores) if scores else float("nan")

    return {"format_ok": sum(s["ended"] for s in samples) / max(len(samples), 1),
            "sentiment_acc": mean_over(("sentiment",)), "idiom_acc": mean_over(IDIOM_ACC_TASKS),
            "arith_acc": mean_over(("arithmetic",)), "idiom_meaning_f1": mean_over(("idiom_meaning",)),
            "n": len(samples), "tasks": tasks, "seconds": time.perf_counter() - t0, "samples": samples}
