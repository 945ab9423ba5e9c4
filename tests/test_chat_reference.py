"""参考对话模型的配方：新加的两种 SFT 样本（下一句、预训练文本），第 06 章的样本不受影响，一条命令能跑通（缩小版）。"""
import json

import pytest
import torch

from course_lib import sft_data
from course_lib.checkpoint import save_model
from course_lib.eval_items import poem_prompts
from course_lib.llama import Llama, LlamaConfig
from course_lib.sft import IGNORE, SFTDataset, encode_text_example
from course_lib.sft_data import REFERENCE_REPEAT, build_sft_examples, next_line_examples, pretrain_examples


@pytest.fixture(scope="module")
def tok(small_bpe):
    return small_bpe(["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "今天的新闻：天气很好。"], margin=300)


def test_chapter_06_examples_have_no_new_tasks():
    # 新任务默认 0 条：第 06 章 90 秒 SFT 的样本（和它的随机数）和以前一样
    train = build_sft_examples("train")
    assert not {e["task"] for e in train} & {"next_line", "pretrain"}


def test_next_line_examples_avoid_the_evaluated_lines():
    examples = next_line_examples("train")
    asked = {a for h in ("seen", "unseen") for a, _ in poem_prompts(h)}
    assert len(examples) > 1000 and next_line_examples("test") == []
    for e in examples:
        question, reply = e["messages"][-2]["content"], e["messages"][-1]["content"]
        first = question.split("」")[0].lstrip("「")
        assert first not in asked                      # 测评问的对子不在 SFT 里
        assert reply == e["answer"] + "。" and 4 <= len(e["answer"]) <= 9


def test_pretrain_examples_are_whole_text_with_every_token_trained(tok):
    import random
    examples = pretrain_examples("train", 20, random.Random(0))
    assert len(examples) == 20 and all(20 <= len(e["text"]) <= sft_data.PRETRAIN_CHARS for e in examples)
    enc = encode_text_example("举头望明月，低头思故乡。", tok, max_len=64)
    assert enc["input_ids"][0] == tok.bos_id and enc["input_ids"][-1] == tok.eos_id
    assert enc["labels"][0] == IGNORE and enc["labels"][1:] == enc["input_ids"][1:]
    assert tok.decode(enc["input_ids"][1:-1]) == "举头望明月，低头思故乡。"
    cut = encode_text_example("举头望明月，低头思故乡。" * 10, tok, max_len=16)
    assert cut["truncated"] and len(cut["input_ids"]) == 16
    ds = SFTDataset(examples[:3] + build_sft_examples("val")[:3], tok, max_len=256)
    assert [e["task"] for e in ds.items[:3]] == ["pretrain"] * 3 and ds.stats["n_kept"] == 6
    with pytest.raises(ValueError, match="非空"):
        encode_text_example("  ", tok)


def test_chat_reference_command_runs_end_to_end_small(tok, tmp_path, monkeypatch):
    from course_lib.cli import chat_reference
    torch.manual_seed(0)
    base = tmp_path / "base"
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, max_seq_len=256, dim=32, n_layers=1, n_heads=2,
                              n_kv_heads=1, tie_weights=True))
    save_model(model, base, dtype=torch.float16, extra={"recipe": {"corpus": "course"}})
    tok.save(base)
    small = {"train": dict(sentiment=8, idiom_meaning=4, idiom_pinyin=4, idiom_chain=0, idiom_source=0, idiom_usage=0,
                           arithmetic=8, dialogue=4, next_line=4, pretrain=4),
             "val": dict(sentiment=2, idiom_meaning=0, idiom_pinyin=0, idiom_chain=0, idiom_source=0, idiom_usage=0,
                         arithmetic=2, dialogue=2, next_line=0, pretrain=2)}
    monkeypatch.setattr(chat_reference, "REFERENCE_SFT_SIZES", small)
    out = chat_reference.build_chat_reference(base, tmp_path / "chat", work=tmp_path / "work", evaluate=False,
                                              progress=False, max_steps=3, eval_interval=3, batch_size=4)
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["sft"]["config"]["max_steps"] == 3 and meta["recipe"] == {"corpus": "course"}
    assert meta["sft"]["tasks"]["next_line"] == 4 and meta["sft"]["tasks"]["pretrain"] == 4
    assert meta["sft"]["tasks"]["arithmetic"] == 8 * REFERENCE_REPEAT["arithmetic"]   # 算术题按 REFERENCE_REPEAT 重复
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 3 and metrics["train_examples"] == 36 + 8 * (REFERENCE_REPEAT["arithmetic"] - 1)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"{metrics['val_loss']:.4f}" in card and "report_chat.md" in card
    # 续训：同一条命令再跑一次，检查点里已经训完，不再训练，结果相同
    again = chat_reference.build_chat_reference(base, tmp_path / "chat2", work=tmp_path / "work", evaluate=False,
                                                progress=False, max_steps=3, eval_interval=3, batch_size=4)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_chat_reference_cli_errors(capsys):
    from course_lib.cli.reference import main
    assert main(["--chat", "--base", "/nonexistent/base"]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert main(["--chat", "--help"]) == 0
