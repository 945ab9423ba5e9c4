import json
from pathlib import Path

import pytest

pytest.importorskip("snownlp")

from course_lib import baselines  # noqa: E402
from course_lib.baselines import SnowNLPSentiment, snownlp_baseline  # noqa: E402
from course_lib.data import Review, load_reviews  # noqa: E402

POS = ["房间很干净，服务也很好，下次还来。", "质量不错，物流很快，非常满意。", "这本书写得很好，值得一读。",
       "酒店位置好，早餐丰富，推荐。", "性价比高，很满意，好评。", "服务热情周到，环境优美。"]
NEG = ["房间很脏，服务太差，再也不来了。", "质量很差，物流太慢，非常失望。", "这本书写得很烂，浪费时间。",
       "酒店位置偏，早餐难吃，不推荐。", "价格贵还坏了，差评。", "前台态度恶劣，环境吵闹。"]


def _reviews():
    return [Review(t, 1, "train") for t in POS] + [Review(t, 0, "train") for t in NEG]


def test_retrained_bayes_learns_toy_data(tmp_data_dir):
    clf = SnowNLPSentiment().fit(_reviews())
    probs = clf.predict_proba(["服务很好，非常满意。", "太差了，非常失望。"])
    assert probs[0] > 0.5 > probs[1]
    assert clf.accuracy(_reviews()) == 1.0
    # 分词结果写进了数据目录下的 JSON 缓存（不是安装包里）
    files = list((tmp_data_dir / "cache" / "snownlp").glob("*.json"))
    assert len(files) == 1
    words = json.loads(files[0].read_text(encoding="utf-8"))["words"]
    assert set(POS) <= set(words) and "服务很好，非常满意。" in words


def test_cache_gives_identical_predictions(tmp_data_dir):
    texts = ["早餐很好吃，房间也大。", "等了一个小时还没上菜。"]
    fresh = SnowNLPSentiment(cache=False).fit(_reviews()).predict_proba(texts)
    SnowNLPSentiment().fit(_reviews()).predict_proba(texts)   # 第一次：写缓存
    cached = SnowNLPSentiment().fit(_reviews())                # 第二次：从缓存读
    assert not cached._dirty
    assert cached.predict_proba(texts) == fresh


def test_does_not_use_or_touch_bundled_model(tmp_data_dir):
    import snownlp.sentiment as bundled
    marshal = Path(bundled.data_path + ".3")
    before = marshal.stat().st_mtime_ns
    clf = SnowNLPSentiment(cache=False).fit(_reviews())
    assert clf._sentiment is not bundled.classifier
    assert clf._sentiment.classifier.total < bundled.classifier.classifier.total / 100  # 只学了这十几条
    assert marshal.stat().st_mtime_ns == before


def test_errors(tmp_data_dir):
    with pytest.raises(ValueError, match="还没训练"):
        SnowNLPSentiment(cache=False).predict_proba(["好"])
    with pytest.raises(ValueError, match="同时有正面"):
        SnowNLPSentiment(cache=False).fit([Review("好", 1, "train")])
    with pytest.raises(ValueError, match="训练集是空的"):
        SnowNLPSentiment(cache=False).fit([])
    with pytest.raises(ValueError, match="同一个划分"):
        snownlp_baseline("test", "test")


def test_baseline_splits_are_disjoint(monkeypatch):
    calls = {}

    class Fake:
        def __init__(self, cache=True):
            pass

        def fit(self, reviews):
            calls["train"] = {r.text for r in reviews}
            return self

        def accuracy(self, reviews):
            calls["test"] = {r.text for r in reviews}
            return 0.5

    monkeypatch.setattr(baselines, "SnowNLPSentiment", Fake)
    result = snownlp_baseline()
    assert not calls["train"] & calls["test"]
    assert result["n_test"] == len(calls["test"]) > 500 and result["n_train"] > 10 * result["n_test"]
    assert 0.5 <= result["majority_accuracy"] < 0.6


def test_parallel_segmentation_matches_sequential(monkeypatch):
    """并行分词（多进程）的结果与 SnowNLP 自己的 Sentiment.handle 逐条相同，顺序也不变。"""
    from snownlp.sentiment import Sentiment

    from course_lib.baselines import segment_parallel
    texts = [r.text for r in load_reviews("test")[:24]]
    reference = Sentiment()
    assert segment_parallel(texts, processes=2) == [reference.handle(t) for t in texts]
    clf = SnowNLPSentiment(cache=False)
    monkeypatch.setattr(SnowNLPSentiment, "PARALLEL_MIN", 5)
    clf._prefetch(texts)
    assert [clf._words_cache[t] for t in texts] == [reference.handle(t) for t in texts]
