"""第 06 章：监督微调（supervised fine-tuning，SFT）——把只会续写的基座模型教成会按格式回答的助手。

这一章的全部零件：
- 指令数据（instruction data）：build_sft_examples(split) 用课程自带的语料现场生成（成语、评论情感、两位数加减法），
  再加上手写的对话 data/sft/dialogues.jsonl。每条是 {"task", "messages", "answer"}。
  联网时可以用 load_alpaca / load_sharegpt 读入 alpaca-zh、BELLE 这类公开数据，格式相同。
- 损失掩码（loss masking）：encode_sft_example 把对话编码成 token，labels 只在助手回复（和它结尾的 <|im_end|>）
  上是 token id，其余位置都是 -100（交叉熵忽略它们）：模型只学「怎么回答」，不学「怎么提问」。
- SFTDataset：编码、截断、跳过没有可训练 token 的样本（并计数），collate 补齐成批次（<|pad|>=2，labels=-100）。
- train_sft：一个小训练循环，复用 train.make_optimizer（AdamW）和 train.lr_at（预热 + 余弦）；批次按长度分组，
  损失默认按样本平均（masked_loss 的 per_example=True：两个 token 的「正面」和四十个 token 的释义分量相同）。
- evaluate_sft：贪心解码，在 test 划分的题目上测格式正确率、情感准确率、成语题准确率、算术精确匹配。
- load_sft_model()：第 07–09 章的入口；data/runs/sft 里没有微调好的模型时，用本章同一个函数和配置现场训练一个。

截断策略（max_len 放不下一段对话时）：
1. 先从最早的一轮（user + assistant）开始整轮丢掉历史，system 提示保留，直到放得下或只剩最后一轮；
   —— 最后一轮是要学的回答，历史越旧越不重要；整轮丢弃保证留下的仍是合法的 ChatML。
2. 只剩一轮还放不下：保留前 max_len 个 token，切掉回复的尾巴（被切掉的部分不训练，也不会教模型「不说 <|im_end|>」
   以外的坏习惯：没有 <|im_end|> 的位置根本不在序列里）。
3. 切完一个可训练的 token 都不剩（提示本身就超过 max_len）：这个样本跳过，并记在 SFTDataset.stats["skipped"] 里。
"""
from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import time
import zlib
from collections import Counter
from pathlib import Path

import torch

from .chat_format import DEFAULT_SYSTEM, IM_START, encode_chat, sanitize, validate_messages
from .data import load_idioms, load_reviews, split_of
from .files import read_text_utf8
from .paths import repo_root, runs_dir
from .report import progress_bar

IGNORE = -100  # PyTorch 交叉熵默认忽略的标签值（ignore_index）

TASKS = ("sentiment", "idiom_meaning", "idiom_pinyin", "idiom_chain", "idiom_source", "idiom_usage",
         "arithmetic", "dialogue")

# 每个划分每种任务取多少条（None = 全部）。train 很大：tiny 档 90 秒的训练只看得到其中两三千条，
# 但多样一些更好；val 用来算验证损失；test 是评测题（第 07、08 章也用同一批题）。
SPLIT_SIZES = {
    "train": dict(sentiment=4000, idiom_meaning=500, idiom_pinyin=500, idiom_chain=500, idiom_source=150,
                  idiom_usage=150, arithmetic=1200, dialogue=None),
    "val": dict(sentiment=16, idiom_meaning=6, idiom_pinyin=6, idiom_chain=6, idiom_source=2,
                idiom_usage=2, arithmetic=8, dialogue=None),
    "test": dict(sentiment=100, idiom_meaning=30, idiom_pinyin=30, idiom_chain=30, idiom_source=0,
                 idiom_usage=0, arithmetic=50, dialogue=None),
}
# 手写对话只有一百多条：训练集里每条重复 12 次，否则「我是小雁」这类身份信息会淹没在几千条生成的题目里。
# 训练集的比例（tiny 档只训练一两百步，比例决定了模型先学会什么）：情感约 48%、成语五种题约 22%、算术约 14%、
# 对话约 16%。情感题的回答最短、格式最固定，是第 7–9 章最依赖的能力，所以占得最多。
DIALOGUE_REPEAT = 12
MAX_REVIEW_CHARS = 64  # 评论太长时只取开头这么多字（评测题只选不超过这个长度的评论）：样本短，训练就快
SENTIMENT_LABELS = ("负面", "正面")  # Review.label：0 = 负面，1 = 正面


# ---------------------------------------------------------------- 1. 指令数据
@functools.lru_cache(maxsize=1)
def _reviews() -> tuple:
    return tuple(load_reviews())  # 读一次、各个划分共用（读全部评论要一两秒）


@functools.lru_cache(maxsize=1)
def _idioms() -> tuple:
    return tuple(load_idioms())


def _hash(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


def _with_system(key: str, messages: list[dict]) -> list[dict]:
    """一半的样本带默认系统提示，一半不带（按 key 的哈希决定，确定性）：两种用法模型都要会。"""
    if _hash("system:" + key) % 2 == 1:
        return messages
    return [{"role": "system", "content": DEFAULT_SYSTEM}] + messages


def _qa(task: str, key: str, question: str, reply: str, answer: str | None) -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return {"task": task, "messages": _with_system(key, messages), "answer": answer}


def _first_sentence(text: str, limit: int) -> str:
    """取第一句（到第一个「。」为止），再限制长度；去掉语料里残留的半个引号。"""
    text = text.replace("”", "").replace("“", "")
    head = text.split("。")[0]
    head = head if len(head) <= limit else head[:limit] + "……"
    return head + "。" if not head.endswith(("……", "。", "！", "？")) else head


def sentiment_example(text: str, label: int) -> dict:
    """「判断这条评论的情感」：回答只有「正面」或「负面」两个字。"""
    text = text if len(text) <= MAX_REVIEW_CHARS else text[:MAX_REVIEW_CHARS] + "……"
    return _qa("sentiment", text, f"判断这条评论的情感是正面还是负面：\n{text}", SENTIMENT_LABELS[label],
               SENTIMENT_LABELS[label])


def idiom_examples(idiom, chain_pool: dict[str, list[str]]) -> list[dict]:
    """一条成语 → 最多五道题：释义、拼音、出处、造句（用法）、成语接龙。"""
    w = idiom.word
    out = [
        _qa("idiom_meaning", "m" + w, f"「{w}」是什么意思？", _first_sentence(idiom.explanation, 40),
            _first_sentence(idiom.explanation, 40)),
        _qa("idiom_pinyin", "p" + w, f"「{w}」怎么读？请写出拼音。", idiom.pinyin, idiom.pinyin),
    ]
    if idiom.derivation:
        src = _first_sentence(idiom.derivation, 50)
        out.append(_qa("idiom_source", "s" + w, f"成语「{w}」出自哪里？", f"出自{src}", src))
    if idiom.example and len(idiom.example) <= 60 and "★" not in idiom.example:
        out.append(_qa("idiom_usage", "u" + w, f"用「{w}」造一个句子。", idiom.example, idiom.example))
    nexts = [c for c in chain_pool.get(idiom.end_word, []) if c != w]
    if nexts:
        nxt = nexts[_hash("chain:" + w) % len(nexts)]
        out.append(_qa("idiom_chain", "c" + w, f"成语接龙：{w}", nxt, nxt))
    return out


def arithmetic_problems(split: str) -> list[tuple[int, str, int]]:
    """两位数加减法的全部题目（确定性）：a + b 和 a - b（a ≥ b），a、b ∈ [10, 99]；按题目的哈希分 train/val/test。"""
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            for op in "+-":
                if op == "-" and a < b:
                    continue
                key = f"{a}{op}{b}"
                if split_of("arith:" + key, 10, 10) == split:
                    out.append((a, op, b))
    return out


def arithmetic_example(a: int, op: str, b: int) -> dict:
    c = a + b if op == "+" else a - b
    return _qa("arithmetic", f"{a}{op}{b}", f"计算：{a}{op}{b}=？", f"{a}{op}{b}={c}", str(c))


def dialogues_path() -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError("找不到课程仓库里的 data/sft/dialogues.jsonl。请在课程仓库里 pip install -e . 后使用。")
    return root / "data" / "sft" / "dialogues.jsonl"


def load_dialogues(path: str | Path | None = None) -> list[dict]:
    """读取手写对话（一行一段 JSON：{"id": ..., "messages": [...]}），逐条检查格式。"""
    path = Path(path) if path is not None else dialogues_path()
    out = []
    for n, line in enumerate(read_text_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} 第 {n} 行不是合法的 JSON（{e}）。") from None
        try:
            check_trainable(obj["messages"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path} 第 {n} 行（id={obj.get('id')!r}）：{e}") from None
        out.append({"id": obj.get("id", str(n)), "messages": obj["messages"]})
    return out


def build_sft_examples(split: str, sizes: dict | None = None, seed: int = 0) -> list[dict]:
    """某个划分的全部 SFT 样本（打乱过，确定性）：每条 {"task", "messages", "answer"}。

    - 评论、成语用 data 模块固定的划分：test 划分从没进入预训练语料，所以评测题基座模型没见过。
    - 算术题按题目哈希划分；手写对话按 id 的哈希划分（约 80% / 10% / 10%）。
    - answer：评测时对照的标准答案（情感标签、拼音、释义、接龙参考答案、算术结果）；手写对话是 None。
    - sizes 覆盖 SPLIT_SIZES[split] 里的条数，例如 {"sentiment": 10}。
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split 只能是 'train'、'val'、'test'，收到 {split!r}。")
    n = {**SPLIT_SIZES[split], **(sizes or {})}
    unknown = set(n) - set(TASKS)
    if unknown:
        raise ValueError(f"sizes 里有不认识的任务 {sorted(unknown)}；任务只有：{', '.join(TASKS)}。")
    rng = random.Random(f"sft-{split}-{seed}")

    def take(items: list, k: int | None) -> list:
        return items if k is None or k >= len(items) else rng.sample(items, k)

    by_task: dict[str, list[dict]] = {t: [] for t in TASKS}
    # 情感：test 只选不太长的评论，正负各半
    reviews = [r for r in _reviews() if r.split == split]
    if split == "test":
        short = [r for r in reviews if len(r.text) <= MAX_REVIEW_CHARS]
        half = n["sentiment"] // 2
        pos, neg = [r for r in short if r.label == 1], [r for r in short if r.label == 0]
        reviews = take(pos, half) + take(neg, n["sentiment"] - half)
    else:
        reviews = take(reviews, n["sentiment"])
    by_task["sentiment"] = [sentiment_example(r.text, r.label) for r in reviews]
    # 成语：接龙的参考答案只从 train 划分里选（那些成语模型在预训练里见过）
    chain_pool: dict[str, list[str]] = {}
    for idiom in _idioms():
        if idiom.split == "train" and len(idiom.word) == 4:
            chain_pool.setdefault(idiom.head_word, []).append(idiom.word)
    idioms = [i for i in _idioms() if i.split == split and len(i.word) == 4 and i.explanation]
    for idiom in idioms:
        for ex in idiom_examples(idiom, chain_pool):
            by_task[ex["task"]].append(ex)
    for task in ("idiom_meaning", "idiom_pinyin", "idiom_chain", "idiom_source", "idiom_usage"):
        by_task[task] = take(by_task[task], n[task])
    by_task["arithmetic"] = [arithmetic_example(*p) for p in take(arithmetic_problems(split), n["arithmetic"])]
    dialogues = [d for d in load_dialogues() if split_of("dialogue:" + d["id"], 10, 10) == split]
    dialogue_examples = [{"task": "dialogue", "answer": None,
                          "messages": d["messages"] if d["messages"][0]["role"] == "system"
                          else _with_system("dialogue:" + d["id"], d["messages"])} for d in dialogues]
    by_task["dialogue"] = take(dialogue_examples * (DIALOGUE_REPEAT if split == "train" else 1), n["dialogue"])
    out = [ex for task in TASKS for ex in by_task[task]]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- 公开数据集的格式
def _read_json_records(path: str | Path) -> list:
    """读 .json（一个列表）或 .jsonl（一行一条）。"""
    text = read_text_utf8(path)
    try:
        if str(path).endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} 不是合法的 JSON（{e}）。") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} 的最外层应该是一个列表（每个元素一条样本），收到 {type(data).__name__}。")
    return data


def load_alpaca(path: str | Path, system: str | None = None) -> list[dict]:
    """alpaca 格式（alpaca-zh、BELLE 的部分数据）：[{"instruction", "input", "output"}, ...] → SFT 样本。

    有 input 时把它接在 instruction 后面（换行分隔），作为一条 user 消息；output 是助手的回复。
    """
    out = []
    for i, rec in enumerate(_read_json_records(path)):
        if not isinstance(rec, dict) or "instruction" not in rec or "output" not in rec:
            raise ValueError(f"{path} 第 {i + 1} 条不是 alpaca 格式：需要 \"instruction\" 和 \"output\" 两个键"
                             f"（\"input\" 可选），收到的键是 {sorted(rec) if isinstance(rec, dict) else type(rec).__name__}。")
        question = rec["instruction"] + (f"\n{rec['input']}" if rec.get("input") else "")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}, {"role": "assistant", "content": rec["output"]}]
        check_trainable(messages)
        out.append({"task": "alpaca", "messages": messages, "answer": None})
    return out


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def load_sharegpt(path: str | Path) -> list[dict]:
    """ShareGPT 格式（{"conversations": [{"from": "human"/"gpt", "value": ...}]}）
    或 OpenAI 格式（{"messages": [{"role": "user"/"assistant", "content": ...}]}）→ SFT 样本。"""
    out = []
    for i, rec in enumerate(_read_json_records(path)):
        turns = rec.get("messages", rec.get("conversations")) if isinstance(rec, dict) else None
        if not isinstance(turns, list):
            raise ValueError(f"{path} 第 {i + 1} 条既没有 \"messages\"（OpenAI 格式）也没有 \"conversations\"（ShareGPT 格式）。")
        messages = []
        for t in turns:
            if "role" in t and "content" in t:
                role, content = t["role"], t["content"]
            elif "from" in t and "value" in t:
                role, content = t["from"], t["value"]
            else:
                raise ValueError(f"{path} 第 {i + 1} 条里有一条消息既不是 role/content 也不是 from/value：{t!r}。")
            if role not in _SHAREGPT_ROLES:
                raise ValueError(f"{path} 第 {i + 1} 条：不认识的角色 {role!r}（认识的有：{', '.join(_SHAREGPT_ROLES)}）。")
            messages.append({"role": _SHAREGPT_ROLES[role], "content": content})
        try:
            check_trainable(messages)
        except ValueError as e:
            raise ValueError(f"{path} 第 {i + 1} 条：{e}") from None
        out.append({"task": "sharegpt", "messages": messages, "answer": None})
    return out


# ---------------------------------------------------------------- 2. 编码与损失掩码
def check_trainable(messages) -> None:
    """训练用的对话：结构合法（见 chat_format.validate_messages），并且最后一条是助手的回复。"""
    validate_messages(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("这段对话缺少助手的回复：训练样本的最后一条消息必须是 assistant（模型要学的就是它）。"
                         f"现在最后一条是 {messages[-1]['role']}。")


def _encode_with_labels(messages, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """逐条消息编码：返回 (ids, labels, 每一轮（user 开头）在 ids 里的起点)。"""
    ids, labels, round_starts = [tokenizer.bos_id], [IGNORE], []
    newline = tokenizer.encode("\n")
    for m in messages:
        if m["role"] == "user":
            round_starts.append(len(ids))
        head = tokenizer.encode(f"{IM_START}{m['role']}\n")
        body = tokenizer.encode(sanitize(m["content"])) + [tokenizer.im_end_id]
        train = m["role"] == "assistant"
        ids += head + body + newline
        labels += [IGNORE] * len(head) + (body if train else [IGNORE] * len(body)) + [IGNORE] * len(newline)
    return ids, labels, round_starts


def encode_sft_example(messages, tokenizer, max_len: int | None = None) -> dict:
    """一段对话 → {"input_ids", "labels", "n_trainable", "truncated", "dropped_rounds"}。

    input_ids 与 chat_format.encode_chat(messages) 完全相同；labels 与 input_ids 等长：助手回复的 token
    和它结尾的 <|im_end|> 处等于 input_ids，其余（bos、system、user、<|im_start|>assistant\\n、换行）都是 -100。
    训练时 x = input_ids[:-1]、y = labels[1:]（往后错一位，见 SFTDataset.collate）。
    超过 max_len 时按本文件开头写的策略截断；n_trainable 可能因此变成 0（调用方应跳过这个样本）。
    """
    check_trainable(messages)
    ids, labels, round_starts = _encode_with_labels(messages, tokenizer)
    full = encode_chat(messages, tokenizer)
    if ids != full:  # 逐条编码必须与整段编码一致，否则掩码的位置就错了
        raise RuntimeError("逐条消息编码的结果与整段编码不同：这个分词器会跨过消息边界合并 token，"
                           "无法安全地确定助手回复的位置。请使用 course_lib 的 BPETokenizer。")
    truncated, dropped = False, 0
    if max_len is not None and len(ids) > max_len:
        truncated = True
        prefix = round_starts[0]  # bos + system（如果有）
        while len(ids) > max_len and dropped < len(round_starts) - 1:  # 1. 整轮丢掉最早的历史
            dropped += 1
            cut = round_starts[dropped]
            ids, labels = ids[:prefix] + ids[cut:], labels[:prefix] + labels[cut:]
            round_starts = [prefix + s - cut for s in round_starts]
        ids, labels = ids[:max_len], labels[:max_len]  # 2. 还太长：切掉结尾
    return {"input_ids": ids, "labels": labels, "n_trainable": sum(y != IGNORE for y in labels),
            "truncated": truncated, "dropped_rounds": dropped}


class SFTDataset(torch.utils.data.Dataset):
    """编码好的 SFT 样本。examples 是 build_sft_examples / load_alpaca / load_sharegpt 的结果（或直接是 messages 列表）。

    stats：n_input（输入多少条）、n_kept（保留）、n_truncated（被截断但仍保留）、n_skipped（截断后没有可训练的
    token，跳过）、n_tokens、n_trainable（可训练 token 总数）。被跳过的样本不会悄悄进入训练。
    """

    def __init__(self, examples, tokenizer, max_len: int = 256, pad_id: int | None = None):
        if max_len < 8:
            raise ValueError(f"max_len={max_len} 太小，至少要放得下 bos、<|im_start|>assistant 和一个回复 token。")
        self.max_len = max_len
        self.pad_id = tokenizer.pad_id if pad_id is None else pad_id
        self.items, self.skipped = [], []
        n_trunc = 0
        for ex in examples:
            messages = ex["messages"] if isinstance(ex, dict) else ex
            enc = encode_sft_example(messages, tokenizer, max_len)
            if enc["n_trainable"] == 0:
                self.skipped.append(ex)
                continue
            n_trunc += enc["truncated"]
            enc["task"] = ex.get("task") if isinstance(ex, dict) else None
            self.items.append(enc)
        self.stats = {"n_input": len(self.items) + len(self.skipped), "n_kept": len(self.items),
                      "n_truncated": n_trunc, "n_skipped": len(self.skipped),
                      "n_tokens": sum(len(e["input_ids"]) for e in self.items),
                      "n_trainable": sum(e["n_trainable"] for e in self.items)}
        if not self.items:
            raise ValueError(f"{self.stats['n_input']} 条样本里没有一条剩下可训练的 token（全部被截断掉了）。"
                             f"请调大 max_len（现在是 {max_len}），或缩短提示。")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def collate(self, batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """补齐成 (x, y)：x = input_ids[:, :-1]，y = labels[:, 1:]；补齐的位置 x 用 pad_id、y 用 -100。

        补在右边：因果注意力只往左看，右边的 pad 影响不到前面任何位置的输出，所以不需要注意力掩码。
        """
        length = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
        for row, e in enumerate(batch):
            ids[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[row, :len(e["labels"])] = torch.tensor(e["labels"])
        return ids[:, :-1], labels[:, 1:]


# ---------------------------------------------------------------- 3. 训练
# train_sft 的配置键（与 profiles.CHAPTERS["06_sft"] 的同名键一一对应；那里多出的键，例如 max_new_tokens，这里不用）
TRAIN_KEYS = ("max_len", "batch_size", "max_steps", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
              "grad_clip", "eval_interval", "seed", "per_example_loss")


def masked_loss(logits: torch.Tensor, y: torch.Tensor, per_example: bool = True) -> torch.Tensor:
    """只在 y ≠ -100 的位置算交叉熵。logits: (B, T, V)，y: (B, T)。

    per_example=False：所有可训练 token 一起平均（与 model(x, y) 返回的损失相同）。
    per_example=True：先在每条样本内部平均，再对样本平均——每条样本分量相同。否则一条 40 个 token 的释义
    抵得上 20 条只有「正面」+ <|im_end|> 两个 token 的情感题，短回答的任务几乎得不到梯度。
    """
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none")  # (B, T)，-100 处为 0
    n = (y != IGNORE).sum(1)                                                                       # (B,)
    if not per_example:
        return ce.sum() / n.sum()
    return (ce.sum(1) / n.clamp(min=1)).mean()


def length_grouped_batches(lengths: list[int], batch_size: int, generator: torch.Generator,
                           group: int = 16) -> list[list[int]]:
    """一轮（epoch）的批次：打乱后每 group 个批次的样本按长度排序再切开，批次顺序再打乱一次。

    同一批里的样本长度相近，补齐浪费的计算就少（随机成批时约 40% 的位置是 pad）；每批样本仍是随机的。
    Hugging Face Trainer 的 group_by_length 也是这个思路。
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), group * batch_size):
        chunk = sorted(order[start:start + group * batch_size], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@torch.no_grad()
def sft_loss(model, dataset: SFTDataset, batch_size: int = 32, per_example: bool = True) -> float:
    """整个数据集上的掩码损失（确定性）。per_example 的含义见 masked_loss；True 时是每条样本平均损失的平均。"""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits = model(x.to(device))[0]
        y = y.to(device)
        n = y.shape[0] if per_example else int((y != IGNORE).sum())
        total, count = total + masked_loss(logits, y, per_example).item() * n, count + n
    model.train(was_training)
    return total / count


def train_sft(model, tokenizer, train_examples, val_examples=None, config: dict | None = None,
              progress: bool = True, **overrides):
    """全参数微调（full fine-tuning）：每步取 batch_size 条样本（length_grouped_batches），补齐，只在助手 token 上算损失。

    config 用 chapter_config("06_sft") 的字典（多余的键忽略）；overrides 覆盖其中的项，例如 max_steps=20。
    优化器与学习率和预训练相同（train.make_optimizer、train.lr_at）。返回 train.History：
    step_loss 每步的损失；eval_step / train_loss（上次评估以来各步的平均）/ val_loss（整个验证集，sft_loss）。
    """
    from .device import autocast
    from .train import History, TrainConfig, lr_at, make_optimizer

    p = {k: v for k, v in {**(config or {}), **overrides}.items() if k in TRAIN_KEYS}
    missing = [k for k in TRAIN_KEYS if k not in p]
    if missing:
        raise ValueError(f"train_sft 缺少这些配置：{missing}。请传 config=chapter_config('06_sft')，或逐项给出。")
    train = train_examples if isinstance(train_examples, SFTDataset) else SFTDataset(train_examples, tokenizer, p["max_len"])
    val = None
    if val_examples is not None:
        val = val_examples if isinstance(val_examples, SFTDataset) else SFTDataset(val_examples, tokenizer, p["max_len"])
    cfg = TrainConfig(max_steps=p["max_steps"], batch_size=p["batch_size"], block_size=p["max_len"], lr=p["lr"],
                      min_lr_ratio=p["min_lr_ratio"], warmup_steps=p["warmup_steps"], weight_decay=p["weight_decay"],
                      grad_clip=p["grad_clip"], eval_interval=p["eval_interval"], seed=p["seed"], progress=progress)
    per_example = bool(p["per_example_loss"])
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = History()

    def evaluate(step: int, recent: list[float]) -> None:
        history.eval_step.append(step)
        history.train_loss.append(sum(recent) / len(recent) if recent else float("nan"))
        history.val_loss.append(sft_loss(model, val, per_example=per_example) if val is not None else float("nan"))

    model.train()
    if val is not None and cfg.eval_interval:
        evaluate(0, [])
    t0, recent, queue = time.perf_counter(), [], []
    lengths = [len(e["input_ids"]) for e in train.items]
    bar = progress_bar(range(cfg.max_steps), desc="SFT", enabled=progress)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if not queue:
            queue = length_grouped_batches(lengths, cfg.batch_size, gen)
        x, y = train.collate([train[i] for i in queue.pop()])
        with autocast(device):
            logits = model(x.to(device))[0]
        loss = masked_loss(logits, y.to(device), per_example)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.step_loss.append(loss.item())
        history.lr.append(lr)
        recent.append(history.step_loss[-1])
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{sum(recent[-10:]) / len(recent[-10:]):.3f}")
        if cfg.eval_interval and ((step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps):
            evaluate(step + 1, recent)
            recent = []
    bar.close()
    history.seconds = time.perf_counter() - t0
    model.eval()
    return history


# ---------------------------------------------------------------- 4. 评测
def generate_reply(model, tokenizer, messages, max_new_tokens: int = 48) -> tuple[str, bool]:
    """贪心解码一条回复：返回 (回复文本, 是否以 <|im_end|> 结束)。messages 的最后一条必须是 user。

    course_lib 的 Llama（以及包了 LoRA 的它）用 model.generate（KV 缓存）；其他模型（只要 model(idx) 返回 logits
    或 (logits, loss)）用一个不带缓存的贪心循环。
    """
    prompt = encode_chat(messages, tokenizer, add_generation_prompt=True)
    stop = (tokenizer.im_end_id, tokenizer.eos_id)
    if hasattr(model, "stream"):
        new = list(model.stream(prompt, max_new_tokens, temperature=0.0, stop_ids=stop))
    else:
        new, ids = [], list(prompt)
        device = next(model.parameters()).device
        with torch.no_grad():
            for _ in range(max_new_tokens):
                out = model(torch.tensor([ids], device=device))
                logits = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
                new.append(int(logits[0, -1].argmax()))
                ids.append(new[-1])
                if new[-1] in stop:
                    break
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


IDIOM_ACC_TASKS = ("idiom_pinyin", "idiom_chain")  # idiom_acc 是这两种题的平均正确率（都是对/错两种结果）


def evaluate_sft(model, tokenizer, examples, max_new_tokens: int = 48) -> dict:
    """在 examples（通常是 build_sft_examples("test")）上贪心解码并打分，返回：

    - format_ok：回复在 max_new_tokens 之内以 <|im_end|> 结束的比例（所有题目）；
    - sentiment_acc、idiom_acc（拼音完全正确与接龙合法的平均）、arith_acc（精确匹配）：0–1 之间的比例；
    - idiom_meaning_f1：释义题的平均字级 F1；
    - tasks：{任务: {"n", "score", "format_ok"}}；n：题目总数；seconds：耗时；
    - samples：[{task, prompt, reply, answer, score, ended}]，每条题目一条，方便展示。
    """
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    samples = []
    for ex in examples:
        messages = ex["messages"][:-1] if ex["messages"][-1]["role"] == "assistant" else ex["messages"]
        reply, ended = generate_reply(model, tokenizer, messages, max_new_tokens)
        score = score_reply(ex, reply) if ex.get("answer") is not None else float("nan")
        samples.append({"task": ex["task"], "prompt": messages[-1]["content"], "reply": reply,
                        "answer": ex.get("answer"), "score": score, "ended": ended})
    model.train(was_training)
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


# ---------------------------------------------------------------- 5. 保存与读取（第 07–09 章的入口）
def sft_model_dir() -> Path:
    """微调好的模型放在这里（data/runs/sft）：model.safetensors + config.json + 分词器。"""
    return runs_dir() / "sft"


def _base_fingerprint() -> str:
    from .reference import reference_dir
    return hashlib.sha256((reference_dir() / "model.safetensors").read_bytes()).hexdigest()


def save_sft_model(model, tokenizer, folder: str | Path | None = None, extra: dict | None = None) -> Path:
    """用 course_lib 的格式保存微调后的模型和分词器（checkpoint.save_model + tokenizer.save）。"""
    from .checkpoint import save_model
    folder = Path(folder) if folder is not None else sft_model_dir()
    save_model(model, folder, extra={"sft": extra or {}, "base_sha256": _base_fingerprint()})
    tokenizer.save(folder)
    return folder


def build_sft_model(profile: str | None = None, progress: bool = True, save: bool = True, device=None, **overrides):
    """从参考基座模型出发，按 chapter_config("06_sft") 做一遍 SFT：返回 (model, tokenizer, history)。

    第 06 章的 notebook 和 load_sft_model() 用的都是这个函数、这份配置，所以两边得到的是同一个模型（CPU 上逐位相同）。
    device=None 时自动选择（有 GPU 就用 GPU）。
    """
    from .device import get_device, seed_everything
    from .profiles import chapter_config
    from .reference import load_reference

    cfg = chapter_config("06_sft", profile, **overrides)
    seed_everything(cfg["seed"])
    model, tokenizer = load_reference(device=get_device(device))
    history = train_sft(model, tokenizer, build_sft_examples("train"), build_sft_examples("val"), cfg, progress)
    if save:
        save_sft_model(model, tokenizer, extra={"config": {k: cfg[k] for k in TRAIN_KEYS},
                                                "val_loss": history.val_loss[-1] if history.val_loss else None})
    return model, tokenizer, history


def load_sft_model(device: str = "cpu", rebuild: bool = True):
    """读取第 06 章微调好的模型，返回 (model, tokenizer)（eval 模式）。

    data/runs/sft 里没有、它是从另一版基座模型微调出来的（参考模型更新过）、或者训练配置与当前 profile 的
    chapter_config("06_sft") 不同，rebuild=True 时用
    build_sft_model() 现场重新训练并保存（tiny 档约 1–2 分钟），所以第 07–09 章可以单独运行。
    """
    from .checkpoint import load_model
    from .tokenizer import BPETokenizer

    from .profiles import chapter_config

    folder = sft_model_dir()
    fresh = False
    if (folder / "model.safetensors").exists() and (folder / BPETokenizer.META_FILE).exists():
        meta = json.loads(read_text_utf8(folder / "config.json"))
        cfg = chapter_config("06_sft")
        wanted = json.loads(json.dumps({k: cfg[k] for k in TRAIN_KEYS}))  # 与存进 JSON 后的样子比较
        fresh = meta.get("base_sha256") == _base_fingerprint() and meta.get("sft", {}).get("config") == wanted
    if not fresh:
        if not rebuild:
            raise FileNotFoundError(f"{folder} 里没有与当前参考模型和配置对应的 SFT 模型。请先运行第 06 章，"
                                    "或调用 load_sft_model(rebuild=True) 自动训练一个。")
        print(f"{folder} 里还没有微调好的模型（或基座模型已更新）：按第 06 章的配置现场训练一个……")
        build_sft_model(progress=False)
    return load_model(folder, device=device).eval(), BPETokenizer.load(folder)
