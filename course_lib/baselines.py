"""外部基线（baseline）：拿课程外的现成方法，在同一份测试集上和我们的模型比一比。

情感分类的基线是 SnowNLP 自带的朴素贝叶斯（naive Bayes）分类器 snownlp.sentiment.Sentiment：
先用 SnowNLP 的分词器切词、去停用词，再按词频算 P(正面 | 词) 。

注意一个陷阱：SnowNLP 安装包里**自带**的情感模型（sentiment.marshal）是用 pos.txt、neg.txt 里的**全部**评论
训练的，其中包括我们的 test 划分——直接用它评测等于偷看了考题，准确率会虚高。所以这里只用它的类，
在我们自己的 train 划分上**重新训练**（在内存里，不读写安装包里的任何文件），再在同一个 test 划分上评测。

SnowNLP 的分词是纯 Python 实现，很慢（一个核每秒几千字，训练集一百多万字单进程要两分半钟），
所以没分过的评论用全部 CPU 核并行分词（2 核约 75 秒），结果缓存在 data/cache/snownlp/ 的 JSON 里
（只有字符串，安全），第二次运行只要几秒。
（import snownlp 时它会顺带读入自己安装包里的分词模型和自带的情感模型；后者我们不用。）
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence

from .data import load_reviews
from .files import atomic_write_json, read_json
from .paths import cache_dir

SEG_CACHE_VERSION = 1


def _snownlp():
    try:
        import snownlp
        from snownlp.sentiment import Sentiment
    except ImportError:
        raise ModuleNotFoundError("情感基线需要 snownlp：pip install snownlp（课程的依赖里已经有它）。") from None
    return snownlp, Sentiment


def _cache_path():
    snownlp, _ = _snownlp()
    version = getattr(snownlp, "__version__", "unknown")
    return cache_dir() / "snownlp" / f"review_words_v{SEG_CACHE_VERSION}_snownlp{version}.json"


def _read_cache(path) -> dict[str, list[str]]:
    """读分词缓存 {"version", "words": {评论: [词, ...]}}；坏了就说清楚删掉它即可（下次运行重新分词）。"""
    fix = f"这只是缓存：删掉它（rm {path}）再运行一次就会重新分词生成（要一两分钟）。"
    obj = read_json(path, "SnowNLP 分词缓存", fix)
    words = obj.get("words") if isinstance(obj, dict) else None
    if not isinstance(words, dict):
        raise ValueError(f"{path} 里没有 \"words\" 字段（评论 → 分词结果），缓存不完整。{fix}")
    return words


_WORKER = None


def _segment(text: str) -> list[str]:
    """子进程里运行：SnowNLP 分词 + 去停用词（与 Sentiment.handle 完全相同）。"""
    global _WORKER
    if _WORKER is None:
        _WORKER = _snownlp()[1]()
    return _WORKER.handle(text)


def segment_parallel(texts: Sequence[str], processes: int | None = None) -> list[list[str]]:
    """用多个进程给一批文本分词，结果顺序与输入相同。processes=None → 全部 CPU 核。"""
    processes = processes or os.cpu_count() or 1
    if processes == 1 or len(texts) < 2:
        return [_segment(t) for t in texts]
    # Linux 上用 fork：子进程直接继承已经读入的分词模型；别的系统用默认方式（子进程重新 import）
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(processes) as pool:
        return pool.map(_segment, texts, chunksize=max(1, len(texts) // (processes * 8)))


class SnowNLPSentiment:
    """SnowNLP 的朴素贝叶斯情感分类器，只在给定的评论上训练。

    >>> clf = SnowNLPSentiment().fit(load_reviews("train"))
    >>> clf.predict_proba(["房间很干净，服务也好"])   # [P(正面)]
    """

    PARALLEL_MIN = 500  # 没分过词的评论达到这么多条，才值得启动多个进程

    def __init__(self, cache: bool = True):
        _, Sentiment = _snownlp()
        self._sentiment = Sentiment()       # 新建的空分类器（不是安装包里训练好的那个）
        self._sentiment.handle = self._words  # 换上带缓存的分词（结果与 Sentiment.handle 完全相同）
        self._handle = Sentiment.handle.__get__(self._sentiment)
        self.cache = cache
        self._words_cache: dict[str, list[str]] = {}
        self._dirty = False
        if cache and _cache_path().exists():
            self._words_cache = _read_cache(_cache_path())
        self.fitted = False

    def _words(self, text: str) -> list[str]:
        words = self._words_cache.get(text)
        if words is None:
            words = self._handle(text)      # SnowNLP 分词 + 去停用词
            self._words_cache[text] = words
            self._dirty = True
        return words

    def _prefetch(self, texts: Sequence[str]) -> None:
        """把还没分过词的文本一次性并行分好，放进缓存。"""
        todo = list(dict.fromkeys(t for t in texts if t not in self._words_cache))
        if len(todo) < self.PARALLEL_MIN:
            return
        self._words_cache.update(zip(todo, segment_parallel(todo)))
        self._dirty = True

    def _save_cache(self) -> None:
        if self.cache and self._dirty:
            atomic_write_json(_cache_path(), {"version": SEG_CACHE_VERSION, "words": self._words_cache})
            self._dirty = False

    def fit(self, reviews: Sequence) -> "SnowNLPSentiment":
        """reviews：data.Review 的列表（有 text、label）。"""
        if not reviews:
            raise ValueError("训练集是空的：请传入 load_reviews('train') 这样的评论列表。")
        labels = {r.label for r in reviews}
        if labels != {0, 1}:
            raise ValueError(f"训练集里要同时有正面（1）和负面（0）的评论，现在只有 {sorted(labels)}。")
        self._prefetch([r.text for r in reviews])
        self._sentiment.train([r.text for r in reviews if r.label == 0], [r.text for r in reviews if r.label == 1])
        self._save_cache()
        self.fitted = True
        return self

    def predict_proba(self, texts: Sequence[str]) -> list[float]:
        """每条文本是正面评论的概率 P(正面)。"""
        if not self.fitted:
            raise ValueError("分类器还没训练：先调用 fit(load_reviews('train'))。")
        self._prefetch(texts)
        probs = [self._sentiment.classify(t) for t in texts]
        self._save_cache()
        return probs

    def accuracy(self, reviews: Sequence, threshold: float = 0.5) -> float:
        probs = self.predict_proba([r.text for r in reviews])
        return sum((p > threshold) == bool(r.label) for p, r in zip(probs, reviews)) / len(reviews)


def snownlp_baseline(train_split: str = "train", test_split: str = "test", cache: bool = True) -> dict:
    """在 train_split 上训练 SnowNLP 的朴素贝叶斯，在 test_split 上评测。

    返回 {"accuracy", "n_train", "n_test", "majority_accuracy"（总猜多数类的准确率）, "seconds"}。
    """
    if train_split == test_split:
        raise ValueError(f"训练和评测用了同一个划分 {train_split!r}：这样测出来的是记忆力，不是泛化能力。")
    start = time.time()
    train, test = load_reviews(train_split), load_reviews(test_split)
    clf = SnowNLPSentiment(cache=cache).fit(train)
    acc = clf.accuracy(test)
    pos = sum(r.label for r in test) / len(test)
    return {"accuracy": acc, "n_train": len(train), "n_test": len(test),
            "majority_accuracy": max(pos, 1 - pos), "seconds": time.time() - start}
