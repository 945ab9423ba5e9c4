"""course_lib.eval / eval_items：题库确定且干净、打分正确、区间正确、transformers 路径与课程模型一致、命令行。"""
import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

from course_lib import eval as ev
from course_lib import eval_items as items
from course_lib.checkpoint import save_model
from course_lib.data import load_idioms
from course_lib.knowledge import load_xiehouyu, quoted
from course_lib.llama import Llama, LlamaConfig
from course_lib.reference import reference_dir
from course_lib.tokenizer import BPETokenizer


# ---------------------------------------------------------------- 区间
def test_wilson_matches_textbook_values():
    # Newcombe (1998) 的表：0/10 → [0, 0.2775]（= z²/(n+z²)；Clopper–Pearson 是 0.3085），5/10 → [0.2366, 0.7634]，1/1 的上界是 1
    assert ev.wilson(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-4))
    lo, hi = ev.wilson(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    assert ev.wilson(1, 1)[1] == 1.0 and ev.wilson(0, 0) == (0.0, 1.0)
    assert ev.wilson(500, 1000)[1] - ev.wilson(500, 1000)[0] < ev.wilson(50, 100)[1] - ev.wilson(50, 100)[0]


def test_ratio_interval_is_exact_when_every_cluster_has_the_same_ratio_and_wide_when_not():
    same = ev.ratio([2, 4, 6], [1, 2, 3])
    assert same["value"] == 2 and same["lo"] == pytest.approx(2) and same["hi"] == pytest.approx(2)
    spread = ev.ratio([0, 4, 1, 3], [2, 2, 2, 2])
    assert spread["lo"] < spread["value"] == 1.0 < spread["hi"]


# ---------------------------------------------------------------- 题库
def test_items_are_deterministic_well_formed_and_large_enough():
    for task in items.CHOICE_TASKS:
        for half in items.HALVES:
            got = items.choice_items(task, half)
            assert got == items._build(task, half)             # 缓存与现场生成完全相同
            minimum = 150 if (task, half) == ("char_meaning", "unseen") else items.ITEMS_PER_HALF  # test 划分只有 799 个字
            assert len(got) >= minimum, (task, half, len(got))
            assert len({c.key for c in got}) == len(got)
            for c in got:
                assert len(c.options) == 4 and len(set(c.options)) == 4 and 0 <= c.answer < 4
            # 正确答案的位置大致均匀；干扰项与答案的长度接近
            assert min(Counter(c.answer for c in got).values()) > len(got) / 8
            gaps = sorted(abs(len(o) - len(c.options[c.answer])) for c in got for o in c.options)
            assert gaps[len(gaps) // 2] <= 1, task


def test_unseen_half_is_in_no_training_text_and_seen_half_is_in_the_train_split():
    index = items.training_clauses()
    for task in items.CHOICE_TASKS:
        for c in items.choice_items("poem_next", "unseen") if task == "poem_next" else items.choice_items(task, "unseen"):
            assert not quoted(c.context + c.options[c.answer], index)
    train_idioms = {i.word for i in load_idioms("train")}
    test_idioms = {i.word for i in load_idioms("test")}
    assert all(c.key in train_idioms for c in items.choice_items("idiom_meaning", "seen"))
    assert all(c.key in test_idioms for c in items.choice_items("idiom_meaning", "unseen"))
    test_riddles = {x.riddle for x in load_xiehouyu("test")}
    assert all(c.key in test_riddles for c in items.choice_items("xiehouyu", "unseen"))
    with pytest.raises(ValueError, match="不认识的选择题任务"):
        items.choice_items("idiom", "seen")
    with pytest.raises(ValueError, match="half"):
        items.choice_items("xiehouyu", "test")


def test_xiehouyu_distractors_are_never_another_accepted_answer():
    answers = {x.riddle: set(x.answers) for x in load_xiehouyu()}
    for half in items.HALVES:
        for c in items.choice_items("xiehouyu", half):
            wrong = set(c.options) - {c.options[c.answer]}
            assert not wrong & answers[c.key]


# ---------------------------------------------------------------- 打分
def test_score_choices_raw_versus_length_normalised():
    c = items.Choice("t", "seen", "k", "ctx", ("长长长长长长", "短", "中中", "中中中"), answer=0)
    # 长选项总对数概率最低（-6）但每字最高（-1/字）：raw 选 1，norm 选 0
    row = ev.score_choices([c], [-6.0, -2.0, -4.0, -6.5])
    assert row["acc"]["k"] == 0 and row["acc_norm"]["k"] == 1 and row["chance"] == 0.25


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """一个随机初始化的小 Llama（用参考模型的分词器），存成 SFT 模型的样子（config 里有 sft）。"""
    tok = BPETokenizer.load(reference_dir())
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, max_seq_len=64, dim=32, n_layers=1, n_heads=2,
                              n_kv_heads=1)).eval()
    folder = tmp_path_factory.mktemp("tiny_chat")
    save_model(model, folder, extra={"sft": {"config": {"max_steps": 1, "batch_size": 1, "max_len": 8}}})
    tok.save(folder)
    return model, tok, folder


def test_sum_logprobs_equals_a_direct_computation(tiny):
    model, tok, folder = tiny
    subject = ev.load_subject(str(folder))
    ids = [tok.bos_id] + tok.encode("床前明月光，疑是地上霜")
    got = ev.sum_logprobs(subject, [(ids, 3), (ids[:5], 1)], progress=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0], -1)
    want = [sum(logp[i - 1, ids[i]].item() for i in range(3, len(ids))), sum(logp[i - 1, ids[i]].item() for i in range(1, 5))]
    assert got == pytest.approx(want, abs=1e-4)


def test_long_documents_are_scored_token_by_token_exactly_once(tiny):
    subject = ev.load_subject(str(tiny[2]))
    text = "今天天气很好，我们去公园散步。" * 30
    pairs = ev.document_pairs(subject, text)
    assert len(pairs) > 1 and all(len(ids) <= subject.context_length for ids, _ in pairs)
    assert sum(len(ids) - first for ids, first in pairs) == len(subject.encode(text))
    assert all(first >= 1 for _, first in pairs)


def test_evaluate_writes_a_report_card_with_intervals_and_baselines(tiny, tmp_path, monkeypatch):
    import course_lib.data
    reviews = course_lib.data.load_reviews
    # SnowNLP 基线在全部 train 评论上分词要一分多钟（第 07 章会缓存）：这里每 50 条取 1 条训练，测的是代码路径
    monkeypatch.setattr(course_lib.data, "load_reviews", lambda split=None: reviews(split)[::50] if split == "train" else reviews(split))
    subject = ev.load_subject(str(tiny[2]))
    assert subject.chat and subject.info["kind"] == "course_lib"
    r = ev.evaluate(subject, "knowledge,bpc,arithmetic,sentiment,pinyin,next_line,identity", limit=3, progress=False)
    for task in items.CHOICE_TASKS:
        for half in items.HALVES:
            row = r["knowledge"][task][half]
            assert row["n"] == 3 and row["acc"]["lo"] <= row["acc"]["value"] <= row["acc"]["hi"] and "bigram" in row
    for domain in ev.BPC_DOMAINS:
        bpc = r["bpc"][domain]["bpc"]["value"]
        assert bpc > math.log2(100) and r["bpc"][domain]["bigram"]["value"] < bpc   # 随机模型比二元模型差得多
    assert set(r["skills"]) == {"arithmetic", "sentiment", "pinyin", "next_line", "identity"}
    assert r["skills"]["next_line"]["n"] == 6 and set(r["skills"]["next_line"]["halves"]) == set(items.HALVES)
    assert "snownlp" in r["skills"]["sentiment"]["baselines"]
    js, md = ev.write_report(r, tmp_path, "tiny")
    again = json.loads(js.read_text(encoding="utf-8"))
    assert again["knowledge"]["xiehouyu"]["seen"]["n"] == 3
    card = md.read_text(encoding="utf-8")
    assert "成语释义" in card and "每个字的比特数" in card and "SnowNLP" in card and "[" in card


def test_base_model_skips_generation_tasks_with_a_note(tmp_path):
    subject = ev.load_subject("base")
    assert not subject.chat and subject.info["tokens_seen"] > 0
    r = ev.evaluate(subject, "xiehouyu,arithmetic", limit=2, baselines=False, progress=False)
    assert r["skills"] == {} and "基座模型" in r["notes"][0] and r["knowledge"]["xiehouyu"]["seen"]["n"] == 2


def test_transformers_folder_scores_the_same_as_the_course_model(tiny, tmp_path):
    """Qwen 这类 transformers 模型走的代码路径：用导出的小模型代替（离线），打分必须与课程模型一致。"""
    pytest.importorskip("transformers")
    from course_lib.chat_format import CHAT_TEMPLATE
    from course_lib.hf import export_hf
    model, tok, folder = tiny
    hf = export_hf(model, tmp_path / "hf", sp_model_path=folder / "tokenizer.model", chat_template=CHAT_TEMPLATE,
                   bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
    ours, theirs = ev.load_subject(str(folder)), ev.load_subject(str(hf))
    assert theirs.info["kind"] == "transformers" and theirs.chat
    choices = items.choice_items("idiom_meaning", "unseen", 4)
    a = ev.sum_logprobs(ours, ev.choice_pairs(ours, choices), progress=False)
    b = ev.sum_logprobs(theirs, ev.choice_pairs(theirs, choices), progress=False)
    assert b == pytest.approx(a, abs=1e-3)
    r = ev.evaluate(theirs, "poem_next,identity", limit=2, baselines=False, progress=False)
    assert r["knowledge"]["poem_next"]["unseen"]["n"] == 2 and r["skills"]["identity"]["n"] == 2


def test_parse_tasks_and_clear_errors():
    assert ev.parse_tasks("all") == ev.TASKS
    assert ev.parse_tasks("bpc,knowledge") == items.CHOICE_TASKS + ("bpc",)
    with pytest.raises(ValueError, match="不认识的评测任务 'mmlu'"):
        ev.parse_tasks("bpc,mmlu")
    with pytest.raises(ValueError, match="空的"):
        ev.parse_tasks(" , ")
    with pytest.raises(ValueError, match="--model"):
        ev.load_subject("")


def test_cli_reports_unknown_tasks_and_models_in_chinese(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "course_lib.eval", *args], capture_output=True, text=True, timeout=120)
    bad = run("--model", "base", "--tasks", "ceval")
    assert bad.returncode == 2 and "不认识的评测任务" in bad.stderr and "Traceback" not in bad.stderr
    missing = run("--model", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "找不到模型文件夹" in missing.stderr and "Traceback" not in missing.stderr
    limit = run("--model", "base", "--limit", "0")
    assert limit.returncode == 2 and "--limit" in limit.stderr
    ok = run("--model", "base", "--tasks", "char_meaning", "--limit", "2", "--no-baselines", "--out", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "report_base.md").exists() and (tmp_path / "report_base.json").exists()


# ---------------------------------------------------------------- 提交的成绩单：由 eval 生成，现在重算还对得上
ROOT = reference_dir().parent.parent
# 成绩单 → 它的 json（md 与 json 同名同目录）：参考基座、上一版参考基座、第 06 章的 SFT 模型、参考对话模型
CARDS = {"base": "assets/base_model/report_base", "base_v1": "docs/report_base_v1", "sft": "docs/report_sft",
         "chat": "assets/chat_model/report_chat"}


@pytest.mark.parametrize("name", CARDS)
def test_committed_report_cards_are_generated_from_their_json(name):
    stem = ROOT / CARDS[name]
    data = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["eval_version"] == ev.EVAL_VERSION and data["limit"] is None and data["tasks"] == list(ev.TASKS)
    assert stem.with_suffix(".md").read_text(encoding="utf-8") == ev.report_card_markdown(data)
    assert f"{CARDS[name]}.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    for task in items.CHOICE_TASKS:
        for half in items.HALVES:
            assert data["knowledge"][task][half]["n"] == len(items.choice_items(task, half))


def test_base_report_card_reproduces_on_this_machine():
    """重算基座模型的两项（歇后语两半、新闻的 bpc），与提交的成绩单比较。
    选择题：float32 在不同 CPU（AVX2 / AVX-512）上的舍入不同，几乎打平的两个选项可能换位，允许差 3 题（0.6 %）；
    bpc：是几千个对数概率的和，舍入误差远小于 0.01。"""
    card = json.loads((ROOT / "assets" / "base_model" / "report_base.json").read_text(encoding="utf-8"))
    subject = ev.load_subject("base")
    r = ev.evaluate(subject, "xiehouyu,bpc", baselines=False, progress=False)
    for half in items.HALVES:
        for key in ("acc", "acc_norm"):
            assert abs(r["knowledge"]["xiehouyu"][half][key]["k"] - card["knowledge"]["xiehouyu"][half][key]["k"]) <= 3
    for domain in ev.BPC_DOMAINS:
        assert r["bpc"][domain]["bpc"]["value"] == pytest.approx(card["bpc"][domain]["bpc"]["value"], abs=0.01)


def test_difference_of_proportions_matches_newcombe():
    from course_lib.eval import difference, proportion
    # Newcombe（1998）表 II 的例子：56/70 − 48/80 = 0.2000，方法 10 的区间 [0.0524, 0.3339]
    d = difference(proportion(56, 70), proportion(48, 80))
    assert d["value"] == pytest.approx(0.2) and d["lo"] == pytest.approx(0.0524, abs=1e-4)
    assert d["hi"] == pytest.approx(0.3339, abs=1e-4)
    same = difference(proportion(30, 100), proportion(30, 100))
    assert same["lo"] < 0 < same["hi"]
