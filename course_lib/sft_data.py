"""第 06 章的指令数据（instruction data）：SFT 要学的题目从哪里来。

- build_sft_examples(split)：用课程自带的语料现场生成（成语、评论情感、两位数加减法），再加上手写的对话
  data/sft/dialogues.jsonl。每条是 {"task", "messages", "answer"}；answer 是评测时对照的标准答案。
- 划分：评论、成语用 course_lib.data 固定的划分（test 从没进入预训练语料，所以评测题基座模型没见过）；
  算术题按题目的哈希划分；手写对话按 id 的哈希划分。
- 联网时可以用 load_alpaca / load_sharegpt 读入 alpaca-zh、BELLE 这类公开数据，格式相同。
编码、损失掩码和训练在 course_lib.sft，评测在 course_lib.sft_eval。
"""
from __future__ import annotations

import functools
import random
import zlib
from pathlib import Path

from .chat_format import DEFAULT_SYSTEM, check_trainable
from .checks import check_int
from .data import load_idioms, load_reviews, split_of
from .files import as_path, read_json, read_jsonl
from .paths import repo_root

TASKS = ("sentiment", "idiom_meaning", "idiom_pinyin", "idiom_chain", "idiom_source", "idiom_usage",
         "arithmetic", "dialogue")                   # 第 06 章的任务
EXTRA_TASKS = ("next_line", "pretrain")          # 只有参考对话模型用（见下面的 REFERENCE_SFT_SIZES）；默认 0 条

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
# next_line（「上一句」的下一句是什么）和 pretrain（一段预训练文本，整段都算损失：防止 SFT 忘掉语言本身）默认不用：
# 第 06 章的 90 秒 SFT 不含它们；参考对话模型（course_lib.cli.reference --chat）用 REFERENCE_SFT_SIZES。
DIALOGUE_REPEAT = 12
# 参考对话模型（python -m course_lib.reference --chat）的条数：None = 全部。评测题（course_lib.eval）都在 test 划分
# 或 eval_items 的 seen 半，这里一道也不会出现（next_line_examples 避开了测评问的对子）。
REFERENCE_SFT_SIZES = {
    "train": dict(sentiment=None, idiom_meaning=4000, idiom_pinyin=16000, idiom_chain=1500, idiom_source=500,
                  idiom_usage=500, arithmetic=None, dialogue=None, next_line=None, pretrain=16000),
    "val": dict(sentiment=100, idiom_meaning=30, idiom_pinyin=30, idiom_chain=30, idiom_source=10, idiom_usage=10,
                arithmetic=50, dialogue=None, next_line=0, pretrain=100),
}
# 参考对话模型里算术题读 3 遍：实测一遍多一点只做对两成多；只训练算术、读约 4 遍后，没见过的题几乎全对。
REFERENCE_REPEAT = dict(arithmetic=3)
PRETRAIN_CHARS = 200   # pretrain 样本：一篇文档开头这么多字（到句末为止）
MAX_REVIEW_CHARS = 64  # 评论太长时只取开头这么多字（评测题只选不超过这个长度的评论）：样本短，训练就快
SENTIMENT_LABELS = ("负面", "正面")  # Review.label：0 = 负面，1 = 正面


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


def next_line_examples(split: str) -> list[dict]:
    """「「上一句」的下一句是什么？」→ 下一句。只用名篇（FAMOUS）的 train 划分，而且避开知识测评的那些对子：

    测评问的正是那些对子（eval_items.poem_prompts("seen")）——SFT 只教「这种问题怎么答」，答不答得出要靠预训练
    时读过那首诗。val/test 没有题（名篇没有 val；test 的诗从不进入任何训练）。
    """
    if split != "train":
        return []
    from .eval_items import poem_line_pairs, poem_prompts
    from .knowledge import load_classics
    asked = {a for a, _ in poem_prompts("seen")} | {a for a, _ in poem_prompts("unseen")}
    out = []
    for c in load_classics("train", famous=True):
        for a, b in poem_line_pairs(c):
            if a not in asked:
                out.append(_qa("next_line", "n" + c.id + a, f"「{a}」的下一句是什么？", b + "。", b))
    return out


def pretrain_examples(split: str, k: int | None, rng: random.Random) -> list[dict]:
    """k 段预训练文本（新闻、评论、成语、古诗文、字典、歇后语，和基座模型读过的是同一个划分）：{"task": "pretrain", "text"}。"""
    from .data import load_corpus
    from .knowledge import load_knowledge_corpus
    docs = [d for d in load_corpus("mix", split).splitlines() + load_knowledge_corpus("knowledge", split).splitlines()
            if len(d) >= 20]
    picked = docs if k is None or k >= len(docs) else rng.sample(docs, k)
    out = []
    for d in picked:
        head = d[:PRETRAIN_CHARS]
        end = max(head.rfind(c) for c in "。！？")
        out.append({"task": "pretrain", "text": head[:end + 1] if end >= 20 else head, "answer": None})
    return out


def dialogues_path() -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError("找不到课程仓库里的 data/sft/dialogues.jsonl。请在课程仓库里 pip install -e . 后使用。")
    return root / "data" / "sft" / "dialogues.jsonl"


def load_dialogues(path: str | Path | None = None) -> list[dict]:
    """读取手写对话（一行一段 JSON：{"id": ..., "messages": [...]}），逐条检查格式。"""
    path = as_path(path, "对话数据") if path is not None else dialogues_path()
    out = []
    fix = "请改正这一行（课程自带的 data/sft/dialogues.jsonl 可以用 git checkout 恢复）。"
    for n, obj in read_jsonl(path, "对话数据", fix, line_numbers=True):
        if not isinstance(obj, dict):
            raise ValueError(f"{path} 第 {n} 行应该是一个 JSON 对象（{{\"id\": ..., \"messages\": [...]}}），"
                             f"收到的是 {type(obj).__name__}。")
        if "messages" not in obj:
            raise ValueError(f"{path} 第 {n} 行（id={obj.get('id')!r}）缺少 \"messages\"（对话的消息列表）。{fix}")
        try:
            check_trainable(obj["messages"])
        except ValueError as e:
            raise ValueError(f"{path} 第 {n} 行（id={obj.get('id')!r}）：{e}") from None
        out.append({"id": obj.get("id", str(n)), "messages": obj["messages"]})
    return out


def build_sft_examples(split: str, sizes: dict | None = None, seed: int = 0, repeat: dict | None = None) -> list[dict]:
    """某个划分的全部 SFT 样本（打乱过，确定性）：每条 {"task", "messages", "answer"}。

    - 评论、成语用 data 模块固定的划分：test 划分从没进入预训练语料，所以评测题基座模型没见过。
    - 算术题按题目哈希划分；手写对话按 id 的哈希划分（约 80% / 10% / 10%）。
    - answer：评测时对照的标准答案（情感标签、拼音、释义、接龙参考答案、算术结果）；手写对话是 None。
    - sizes 覆盖 SPLIT_SIZES[split] 里的条数，例如 {"sentiment": 10}。
    - repeat：「任务 → 遍数」，这种任务的样本在结果里出现这么多遍（例如参考对话模型的 REFERENCE_REPEAT）。
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split 只能是 'train'、'val'、'test'，收到 {split!r}。")
    if sizes is not None and not isinstance(sizes, dict):
        raise ValueError(f"sizes 应该是「任务 → 条数」的字典，例如 {{\"sentiment\": 10}}，收到 {sizes!r:.40}。")
    n = {**dict.fromkeys(EXTRA_TASKS, 0), **SPLIT_SIZES[split], **(sizes or {})}
    unknown = set(n) - set(TASKS + EXTRA_TASKS)
    if unknown:
        raise ValueError(f"sizes 里有不认识的任务 {sorted(unknown)}；任务只有：{', '.join(TASKS + EXTRA_TASKS)}。")
    for task, k in (sizes or {}).items():
        check_int(k, f"sizes[{task!r}]", 0, allow_none=True)
    rng = random.Random(f"sft-{split}-{seed}")

    def take(items: list, k: int | None) -> list:
        return items if k is None or k >= len(items) else rng.sample(items, k)

    by_task: dict[str, list[dict]] = {t: [] for t in TASKS + EXTRA_TASKS}
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
    if n["next_line"] != 0:   # 默认 0：不读古诗文，也不动随机数（第 06 章的样本和以前完全一样）
        by_task["next_line"] = take(next_line_examples(split), n["next_line"])
    if n["pretrain"] != 0:
        by_task["pretrain"] = pretrain_examples(split, n["pretrain"], rng)
    for task, times in (repeat or {}).items():
        if task not in by_task:
            raise ValueError(f"repeat 里有不认识的任务 {task!r}；任务只有：{', '.join(TASKS + EXTRA_TASKS)}。")
        by_task[task] = by_task[task] * check_int(times, f"repeat[{task!r}]", 1)
    out = [ex for task in TASKS + EXTRA_TASKS for ex in by_task[task]]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- 公开数据集的格式
def _read_json_records(path: str | Path) -> list:
    """读 .json（一个列表）或 .jsonl（一行一条）。"""
    fix = "请检查这个文件：它可能没下载完，或者被手工改坏了；重新下载即可。"
    if str(path).endswith(".jsonl"):
        return read_jsonl(path, "数据文件", fix)
    data = read_json(path, "数据文件", fix)
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
        bad = [k for k in ("instruction", "input", "output") if k in rec and not isinstance(rec[k], str)
               and not (k == "input" and rec[k] is None)]
        if bad:
            raise ValueError(f"{path} 第 {i + 1} 条：{'、'.join(bad)} 应该是字符串，"
                             f"收到 {'、'.join(type(rec[k]).__name__ for k in bad)}。")
        question = rec["instruction"] + (f"\n{rec['input']}" if rec.get("input") else "")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}, {"role": "assistant", "content": rec["output"]}]
        _check_record(path, i, messages)
        out.append({"task": "alpaca", "messages": messages, "answer": None})
    return out


def _check_record(path, i: int, messages) -> None:
    try:
        check_trainable(messages)
    except ValueError as e:
        raise ValueError(f"{path} 第 {i + 1} 条：{e}") from None


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
            if not isinstance(t, dict):
                raise ValueError(f"{path} 第 {i + 1} 条里的消息应该是对象（{{\"role\": ..., \"content\": ...}}），收到 {t!r:.40}。")
            if "role" in t and "content" in t:
                role, content = t["role"], t["content"]
            elif "from" in t and "value" in t:
                role, content = t["from"], t["value"]
            else:
                raise ValueError(f"{path} 第 {i + 1} 条里有一条消息既不是 role/content 也不是 from/value：{t!r}。")
            if role not in _SHAREGPT_ROLES:
                raise ValueError(f"{path} 第 {i + 1} 条：不认识的角色 {role!r}（认识的有：{', '.join(_SHAREGPT_ROLES)}）。")
            messages.append({"role": _SHAREGPT_ROLES[role], "content": content})
        _check_record(path, i, messages)
        out.append({"task": "sharegpt", "messages": messages, "answer": None})
    return out
