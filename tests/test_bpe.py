import json

import numpy as np
import pytest
import torch

from course_lib import CharTokenizer, load_corpus
from course_lib.tokenizer import SPECIAL_TOKENS, BPETokenizer

VOCAB = 3000  # 新闻 val（约 18 万字）在默认覆盖率 0.995 下至少要 2721（见 test_too_small_vocab）

TEXTS = [
    "中国人民，你好。今天是 2024 年 1 月 1 日！",
    "“引号”（括号）《书名》——破折号……、顿号；分号：冒号？",
    "English words, digits 1234567890 and   three spaces",
    " 开头有空格，结尾也有 ",
    "第一行\n第二行\r\n\t缩进\n\n",
    "emoji 😀👍🏽 和生僻字 𪚥龘 都能编码",
    "全角数字１２３和半角 123",
]


@pytest.fixture(scope="module")
def news():
    return load_corpus("news", "val")


@pytest.fixture(scope="module")
def tok(news, tmp_path_factory):
    return BPETokenizer.train(news, tmp_path_factory.mktemp("tok"), vocab_size=VOCAB)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.unk_id not in ids  # 字节回退：永远不出现 <unk>
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids, dtype=np.uint16)) == text


def test_byte_fallback_for_unseen_characters(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("😀")]
    assert pieces == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]  # 4 个 UTF-8 字节
    assert [tok.id_to_piece(i) for i in tok.encode("𪚥")] == ["<0xF0>", "<0xAA>", "<0x9A>", "<0xA5>"]


def test_chinese_punctuation_kept_full_width(tok):
    for p in "，。：（":
        assert [tok.id_to_piece(i) for i in tok.encode(p)] == [p]  # 没被 NFKC 改成半角，而且是一个 token
    assert [tok.id_to_piece(i) for i in tok.encode("2024")] == ["2", "0", "2", "4"]  # split_digits


def test_special_tokens_are_single_fixed_ids(tok):
    assert (tok.unk_id, tok.eos_id, tok.bos_id, tok.pad_id, tok.im_start_id, tok.im_end_id) == (0, 1, 1, 2, 3, 4)
    assert tok.special_tokens == {"<unk>": 0, "<|endoftext|>": 1, "<|pad|>": 2, "<|im_start|>": 3, "<|im_end|>": 4}
    for i, piece in enumerate(SPECIAL_TOKENS, start=1):
        assert tok.encode(piece) == [i] and tok.decode([i]) == piece
    chat = "<|im_start|>user\n你好<|im_end|>\n"
    ids = tok.encode(chat)
    assert ids[0] == tok.im_start_id and tok.im_end_id in ids and tok.decode(ids) == chat
    assert tok.encode("你好", bos=True, eos=True) == [1] + tok.encode("你好") + [1]
    assert tok.id_to_piece(5) == "<0x00>" and tok.id_to_piece(260) == "<0xFF>"


def test_compresses_better_than_characters(tok, news):
    assert 1.1 < tok.chars_per_token(news) < 3.0 and tok.vocab_size == VOCAB
    assert len(tok.encode(news)) < len(CharTokenizer.from_text(news).encode(news))  # 字符级：1 字 = 1 token


def test_deterministic_training(news, tok):
    again = BPETokenizer.train(news, vocab_size=VOCAB)
    assert again.fingerprint == tok.fingerprint and again.model_proto == tok.model_proto
    other = BPETokenizer.train(news, vocab_size=VOCAB + 100)
    assert other.fingerprint != tok.fingerprint


def test_too_small_vocab(news):
    minimum = BPETokenizer.min_vocab_size(news)
    assert minimum == 2721  # 261 个固定 id + 2460 个单字（含表示空格的 ▁）
    assert BPETokenizer.train(news, vocab_size=minimum).vocab_size == minimum  # 恰好够：下限算得准
    with pytest.raises(ValueError, match="至少要 2721"):
        BPETokenizer.train(news, vocab_size=minimum - 1)
    with pytest.raises(ValueError, match="uint16"):
        BPETokenizer.train(news, vocab_size=70_000)
    with pytest.raises(ValueError, match="0.98"):
        BPETokenizer.train(news, vocab_size=VOCAB, character_coverage=0.9)
    with pytest.raises(ValueError, match="空的"):
        BPETokenizer.train(["", "  \n"], vocab_size=VOCAB)


def test_save_load(tok, tmp_path):
    folder = tok.save(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.model", "tokenizer_meta.json"]  # 没有临时文件
    meta = json.loads((folder / "tokenizer_meta.json").read_text(encoding="utf-8"))
    assert meta["sha256"] == tok.fingerprint and meta["vocab_size"] == VOCAB and meta["eos_id"] == 1
    again = BPETokenizer.load(folder)
    assert again.fingerprint == tok.fingerprint and again.encode(TEXTS[0]) == tok.encode(TEXTS[0])
    assert again.meta["training"]["options"]["character_coverage"] == 0.995


def test_load_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="BPETokenizer.train"):
        BPETokenizer.load(tmp_path / "nothing")
    folder = tok.save(tmp_path / "tok")
    model = folder / "tokenizer.model"
    model.write_bytes(model.read_bytes()[:-10])  # 截断
    with pytest.raises(ValueError, match="损坏或被替换"):
        BPETokenizer.load(folder)
    with pytest.raises(ValueError, match="无法解析"):
        BPETokenizer(b"not a model")
    with pytest.raises(ValueError, match="超出了词表范围"):
        tok.decode([VOCAB])
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")


def test_known_limit_of_sentencepiece(tok):
    # ▁（U+2581）是 sentencepiece 内部的空格记号，所以它本身解码回来是空格（docstring 里写明了）
    assert tok.decode(tok.encode("a▁b")) == "a b"
