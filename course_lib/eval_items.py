"""评测题库（benchmark items）：`course_lib.eval` 考的每一道题都在这里确定地生成，任何机器上完全相同。

两半（halves），每个知识任务都有，只在这里定义一次：
- seen（见过）：题目的原文在课程的预训练语料里（成语、古诗文、字典、歇后语的 train 划分，见 course_lib.data /
  course_lib.knowledge）。模型做对它，说明它记住了读过的东西。
- unseen（没见过）：原文在 test 划分，从不进入任何语料；另外再查一遍：答案或题面有一个分句（≥ 5 个汉字）出现在
  任何训练文本里的题目直接去掉（knowledge.quoted）。模型做对它，只能靠推理或碰运气。
当前的参考基座模型只读过 mix（新闻 + 评论 + 成语）：它的古诗、字典、歇后语「见过」的一半其实也没读过，
评测报告按模型的训练语料注明这一点。

选择题（multiple choice）四个选项：干扰项来自同一半、同一任务的其他题的答案，长度与正确答案最接近，
按题目的哈希挑选；正确答案的位置也由哈希决定。四个知识任务：
    idiom_meaning  成语释义    「胸有成竹（xiōng yǒu chéng zhú）：」→ 哪一句是它的释义
    poem_next      诗句接续    「床前明月光，」→ 哪一句是下一句
    xiehouyu       歇后语      「外甥打灯笼——」→ 哪一个是后半句
    char_meaning   字典释义    「「艾」（ài）的意思是：」→ 哪一条是它的第一个义项
题库第一次生成约 20 秒（要读全部语料查引用），之后缓存在 data/cache/eval/。
"""
from __future__ import annotations

import functools
import re
import zlib
from dataclasses import asdict, dataclass

from .data import CLEAN_VERSION, load_corpus, load_idioms, load_reviews
from .files import atomic_write_json, read_json
from .knowledge import (
    CLASSICS_SHA256,
    KNOWLEDGE_VERSION,
    clause_index,
    load_characters,
    load_classics,
    load_knowledge_corpus,
    load_xiehouyu,
    quoted,
)
from .paths import cache_dir

ITEMS_VERSION = 1          # 改了出题规则就加一，旧缓存自动失效
HALVES = ("seen", "unseen")
HALF_SPLIT = {"seen": "train", "unseen": "test"}   # 两半各对应数据的哪个划分
CHOICE_TASKS = ("idiom_meaning", "poem_next", "xiehouyu", "char_meaning")
ITEMS_PER_HALF = 500       # 每个任务每一半最多这么多题（数据够的话）
N_OPTIONS = 4
_HAN = re.compile("^[\u3400-\u9fff]+$")
_PAIR = re.compile("([^，。？！；、：]+)，([^，。？！；、：]+)[。？！；]")
_SENSE = re.compile(r"(?:⒈|(?<![0-9.])1\.)\s*([^⒉\n]+?)(?=\s*(?:⒉|2\.)|\n|$)")   # 第一个义项：⒈… 或 1.…
_NOT_A_SENSE = re.compile(r"[A-Za-z\"“”'ㄅ-ㄩ（）()]|^(见|同|通|古同|古通|姓|用于|日本)|未详")  # 「见某词」「同某字」这类参见


@dataclass(frozen=True)
class Choice:
    """一道选择题：context 后面接哪一个 options 最可能？answer 是正确选项的下标。"""
    task: str
    half: str
    key: str
    context: str
    options: tuple[str, ...]
    answer: int


def _rank(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _first_sentence(text: str) -> str:
    return text.split("。")[0].strip("“”\"' ")


# ---------------------------------------------------------------- 每个任务的 (key, context, answer, 不能当干扰项的答案)
def _idiom_meaning(split: str) -> list[tuple]:
    out = []
    for i in load_idioms(split):
        sense = _first_sentence(i.explanation)
        if 6 <= len(sense) <= 40 and i.word not in sense:
            out.append((i.word, f"{i.word}（{i.pinyin}）：", sense, ()))
    return out


def poem_line_pairs(classic) -> list[tuple[str, str]]:
    """一篇古诗文里所有「上句，下句。」的对子（每句 4–9 个汉字）：诗句接续题和 SFT 的「下一句」题都从这里取。"""
    return [(a, b) for p in classic.paragraphs for a, b in _PAIR.findall(p)
            if 4 <= len(a) <= 9 and 4 <= len(b) <= 9 and _HAN.match(a) and _HAN.match(b)]


def _poem_pairs(split: str) -> list[tuple]:
    out = []
    for c in load_classics(split, famous=True):
        pairs = poem_line_pairs(c)
        if pairs:
            a, b = pairs[_rank("pair:" + c.id) % len(pairs)]
            out.append((c.id, f"{a}，", b, ()))
    return out


def _xiehouyu(split: str) -> list[tuple]:
    return [(x.riddle, f"{x.riddle}——", x.answers[0], x.answers[1:])
            for x in load_xiehouyu(split) if 2 <= len(x.answers[0]) <= 12]


def _char_meaning(split: str) -> list[tuple]:
    out = []
    for c in load_characters(split):
        m = _SENSE.search(c.explanation)
        sense = _first_sentence(m.group(1)).strip("；;，, ") if m else ""
        if 4 <= len(sense) <= 30 and c.char not in sense and not _NOT_A_SENSE.search(sense):
            out.append((f"{c.char}:{c.pinyin}", f"「{c.char}」（{c.pinyin}）的意思是：", sense, ()))
    return out


_SOURCES = {"idiom_meaning": _idiom_meaning, "poem_next": _poem_pairs, "xiehouyu": _xiehouyu,
            "char_meaning": _char_meaning}


@functools.lru_cache(maxsize=1)
def training_clauses() -> frozenset[str]:
    """课程所有训练文本（mix 语料 + 知识语料的 train 划分）里的分句：查「没见过」的题有没有漏进训练文本。"""
    return clause_index(load_corpus("mix", "train").splitlines() + load_knowledge_corpus("knowledge", "train").splitlines())


def _distractors(answer: str, avoid: set[str], by_length: dict[int, list[str]], key: str) -> list[str]:
    """长度与 answer 最接近的候选里，按哈希挑 N_OPTIONS - 1 个（不同于答案，也互不相同）。"""
    pool: list[str] = []
    for d in sorted(by_length, key=lambda n: (abs(n - len(answer)), n)):
        pool += [x for x in by_length[d] if x not in avoid]
        if len(set(pool)) >= 12:
            break
    picked = []
    for x in sorted(set(pool), key=lambda x: _rank(key + "|" + x)):
        picked.append(x)
        if len(picked) == N_OPTIONS - 1:
            break
    return picked


def _build(task: str, half: str) -> list[Choice]:
    raw = _SOURCES[task](HALF_SPLIT[half])
    if half == "unseen":
        index = training_clauses()
        raw = [r for r in raw if not quoted(r[1] + r[2], index)]
    by_length: dict[int, list[str]] = {}
    for r in raw:
        by_length.setdefault(len(r[2]), []).append(r[2])
    items = []
    for key, context, answer, others in sorted(raw, key=lambda r: (_rank(task + r[0]), r[0])):
        wrong = _distractors(answer, {answer, *others}, by_length, task + key)
        if len(wrong) < N_OPTIONS - 1:
            continue
        pos = _rank("pos:" + task + key) % N_OPTIONS
        options = tuple(wrong[:pos] + [answer] + wrong[pos:])
        items.append(Choice(task, half, key, context, options, pos))
        if len(items) == ITEMS_PER_HALF:
            break
    return items


def _cache_path():
    return cache_dir() / "eval" / f"items_v{ITEMS_VERSION}_c{CLEAN_VERSION}_k{KNOWLEDGE_VERSION}_{CLASSICS_SHA256[:8]}.json"


@functools.lru_cache(maxsize=1)
def _all_choices() -> dict[str, list[Choice]]:
    path = _cache_path()
    if path.exists():
        try:
            raw = read_json(path, "评测题库的缓存", f"删掉 {path}，会重新生成。")
            return {k: [Choice(**{**d, "options": tuple(d["options"])}) for d in v] for k, v in raw.items()}
        except (ValueError, TypeError, KeyError):
            pass   # 缓存坏了：重新生成
    out = {f"{t}/{h}": _build(t, h) for t in CHOICE_TASKS for h in HALVES}
    atomic_write_json(path, {k: [asdict(c) for c in v] for k, v in out.items()})
    return out


def choice_items(task: str, half: str, limit: int | None = None) -> list[Choice]:
    """某个选择题任务某一半的题目（确定性）；limit 只取前 limit 道。"""
    if task not in CHOICE_TASKS:
        raise ValueError(f"不认识的选择题任务 {task!r}。可选：{', '.join(CHOICE_TASKS)}。")
    if half not in HALVES:
        raise ValueError(f"half 只能是 {' 或 '.join(HALVES)}，收到 {half!r}。")
    return _all_choices()[f"{task}/{half}"][:limit]


# ---------------------------------------------------------------- 对话模型的生成题（prompt + 标准答案）
def poem_prompts(half: str, limit: int | None = None) -> list[tuple[str, str]]:
    """诗句接续的生成版：(上一句, 下一句)，和选择题 poem_next 是同一批诗句。"""
    return [(c.context.rstrip("，"), c.options[c.answer]) for c in choice_items("poem_next", half, limit)]


def pinyin_idioms(limit: int | None = None) -> list:
    """拼音题：test 划分（从没进入语料）的成语，按哈希排序。"""
    items = sorted(load_idioms("test"), key=lambda i: (_rank("pinyin:" + i.word), i.word))
    return items[:limit]


def sentiment_reviews(limit: int | None = None) -> list:
    """情感题：test 划分的全部评论（从没进入语料，也没进入 SFT 的训练题）。"""
    return load_reviews("test")[:limit]


IDENTITY_PROMPTS = ("你是谁？", "你叫什么名字？", "请介绍一下你自己。", "你好，请问怎么称呼你？", "你是什么模型？")
IDENTITY_NAME = "小雁"   # data/sft/dialogues.jsonl 里助手的名字
