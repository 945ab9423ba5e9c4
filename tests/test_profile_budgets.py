"""profiles.pretraining_budget / sft_budget：GPU 档（small、full）不会把训练数据读太多遍；算术手算核对。"""
import math

import pytest

from course_lib.data import load_corpus
from course_lib.profiles import MAX_EPOCHS, pretraining_budget, sft_budget

GPU_PROFILES = ("small", "full")


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_pretraining_reads_corpus_at_most_about_4_times(profile):
    b = pretraining_budget(profile)
    assert b["corpus"] == "course"
    assert b["epochs"] <= MAX_EPOCHS + 0.5, b
    # profiles.py 注释里写的数：两档都约 4,915 万 token、约 3.2 遍（语料变了，这里会提醒去更新注释）
    assert b["planned_tokens"] == 49_152_000
    assert b["epochs"] == pytest.approx(3.2, abs=0.1)


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_sft_reads_train_set_at_most_about_4_times(profile):
    b = sft_budget(profile)
    assert b["epochs"] <= MAX_EPOCHS + 0.5, b
    assert b["epochs"] == pytest.approx(3.5, abs=0.1)  # profiles.py 注释里写的数


def test_pretraining_budget_by_hand():
    # 每步 3 条 × 累积 2 次 × 2 个进程 × 10 个 token = 120 个 token；100 步 = 12,000 个 token
    b = pretraining_budget("small", world_size=2, batch_size=3, grad_accum_steps=2, block_size=10, max_steps=100)
    assert b["tokens_per_step"] == 120 and b["planned_tokens"] == 12_000
    chars = len(load_corpus("course", "train"))
    assert b["corpus_chars"] == chars
    assert b["corpus_tokens"] == round(chars / 1.0826)  # CHARS_PER_TOKEN[("course", 6400)]
    assert b["epochs"] == pytest.approx(12_000 / round(chars / 1.0826))
    # 没有实测值的（语料, 词表）：1 字 = 1 token
    b = pretraining_budget("small", vocab_size=5000)
    assert b["corpus_tokens"] == chars and b["chars_per_token"] == 1.0


def test_pretraining_budget_counts_tokens_with_a_tokenizer():
    class OneTokenPerChar:  # 假的分词器：每个字一个 token，每篇再加一个 eos
        vocab_size = 99

        def encode(self, text, eos=False):
            return [0] * (len(text) + eos)

    b = pretraining_budget("tiny", tokenizer=OneTokenPerChar())
    text = load_corpus("news", "train")
    assert b["corpus_tokens"] == len(text) + 1  # 换行变成了 eos，再加上最后一篇的 eos
    assert b["chars_per_token_source"].startswith("实测")


def test_sft_budget_by_hand():
    small = sft_budget("small")
    # 一轮的批数 = ceil(条数 / 每批条数)；epochs = 步数 / 一轮的批数
    assert small["batches_per_epoch"] == math.ceil(small["n_examples"] / 32)
    assert small["epochs"] == pytest.approx(900 / math.ceil(small["n_examples"] / 32))
    two = sft_budget("small", world_size=2, max_steps=10)
    assert two["examples_per_step"] == 64 and two["planned_examples"] == 640
    assert two["epochs"] == pytest.approx(10 / math.ceil(two["n_examples"] / 64))


def test_readme_budget_table_is_generated():
    from course_lib.paths import repo_root
    from course_lib.profiles import budget_markdown
    readme = (repo_root() / "README.md").read_text(encoding="utf-8")
    assert budget_markdown() in readme, "README 里的数据预算表过时了：用 profiles.budget_markdown() 重新生成"
