"""下一版参考基座模型（assets/base_model_next，course 语料 + 缩放实验选的大小）：文件齐全、数字可复现、
模型卡和成绩单是生成的，issue 12 的两条目标（新闻 bpc 低于旧参考模型；「见过」的一半明显高于随机和「没见过」）成立。"""
import json
import math

import pytest

from course_lib.checkpoint import load_model
from course_lib.cli.reference import model_card
from course_lib.eval import difference, report_card_markdown
from course_lib.losses import evaluate_loss
from course_lib.paths import repo_root
from course_lib.reference import HEAD_WINDOWS, PUBLISHED_FILES, REFERENCE_CONFIG
from course_lib.scaling import CHOICE, size_config
from course_lib.token_data import load_token_bin, prepare_pretraining_data
from course_lib.tokenizer import BPETokenizer

ROOT = repo_root()
FOLDER = ROOT / "assets" / "base_model_next"
OLD_REPORT = ROOT / "docs" / "report_base.json"   # 旧参考模型（assets/base_model）的成绩单


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_published_files_recipe_and_size():
    for name in PUBLISHED_FILES + ("report_base.md", "report_base.json"):
        assert (FOLDER / name).exists(), f"assets/base_model_next 缺少 {name}"
    assert (FOLDER / "model.safetensors").stat().st_size <= 16 * 1024 * 1024
    meta = _json(FOLDER / "config.json")
    recipe = meta["recipe"]
    assert recipe["corpus"] == "course" and {k: recipe[k] for k in size_config(CHOICE)} == size_config(CHOICE)
    # config.json 里记下的命令就是复现它的命令：命令里的覆盖项 + 默认配方 = 记下的配方
    args = meta["command"].split("python -m course_lib.reference ")[1].split()
    given = dict(zip(args[::2], args[1::2]))
    assert given.pop("--out") == "assets/base_model_next"
    assert {k: v for k, v in recipe.items() if f"--{k}" not in given} == \
        {k: v for k, v in REFERENCE_CONFIG.items() if f"--{k}" not in given}
    assert all(str(recipe[k[2:]]) == v for k, v in given.items())
    assert meta["step"] == recipe["max_steps"]


def test_metrics_reproduce_and_cards_are_generated():
    model, tok = load_model(FOLDER).eval(), BPETokenizer.load(FOLDER)
    m = _json(FOLDER / "metrics.json")
    assert m["params"] == model.num_params() and tok.fingerprint == m["tokenizer_fingerprint"]
    val = load_token_bin(prepare_pretraining_data(tok, corpus="course", progress=False)["val"], tok)
    head = evaluate_loss(model, val, REFERENCE_CONFIG["block_size"], max_windows=HEAD_WINDOWS)
    assert abs(head - m["val_loss_head"]) < 1e-4
    meta = _json(FOLDER / "config.json")
    assert (FOLDER / "README.md").read_text(encoding="utf-8") == model_card(meta["recipe"], m, meta["command"])
    report = _json(FOLDER / "report_base.json")
    assert (FOLDER / "report_base.md").read_text(encoding="utf-8") == report_card_markdown(report)


def test_news_bits_per_character_below_the_old_reference():
    from course_lib.eval import _bpc_documents, ratio
    new, old = _json(FOLDER / "report_base.json")["bpc"]["news"], _json(OLD_REPORT)["bpc"]["news"]
    assert new["bpc"]["value"] < old["bpc"]["value"]
    # 同一批新闻文档，逐篇配对：差的 95 % 区间整个在 0 以下
    chars = [len(d) for d in _bpc_documents("news")]
    diff = ratio([b - a for a, b in zip(old["doc_bits"], new["doc_bits"])], chars)
    assert diff["hi"] < 0, diff


def test_seen_half_clearly_above_chance_and_above_unseen():
    knowledge = _json(FOLDER / "report_base.json")["knowledge"]
    for task in ("idiom_meaning", "poem_next", "xiehouyu", "char_meaning"):
        seen, unseen = knowledge[task]["seen"]["acc_norm"], knowledge[task]["unseen"]["acc_norm"]
        assert seen["lo"] > 0.25, (task, seen)
        assert difference(seen, unseen)["lo"] > 0, (task, seen, unseen)


def test_readme_comparison_table_is_generated():
    from course_lib.eval import compare_markdown
    table = compare_markdown({"旧：assets/base_model": _json(OLD_REPORT), "新：assets/base_model_next": _json(FOLDER / "report_base.json")})
    assert table in (ROOT / "README.md").read_text(encoding="utf-8"), "README 里的新旧基座对比表过时了：用 compare_markdown 重新生成"
