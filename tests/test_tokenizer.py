import pytest

from course_lib import CharTokenizer
from course_lib.tokenizer import UNK

TEXT = "我爱北京天安门，天安门上太阳升。"


def test_round_trip():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.vocab_size == len(set(TEXT)) + 1  # + UNK
    assert tok.decode(tok.encode_tensor(TEXT)) == TEXT


def test_unseen_characters():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode("我爱广州")
    assert ids[2:] == [tok.unk_id, tok.unk_id] and tok.unk_id == 0
    assert tok.decode(ids) == "我爱" + UNK * 2
    with pytest.raises(ValueError, match="不在词表里"):
        tok.encode("我爱广州", unknown="error")
    assert tok.coverage("我爱广州") == 0.5


def test_max_vocab_keeps_most_frequent():
    tok = CharTokenizer.from_text("aaaabbbc", max_vocab=3)
    assert tok.itos == [UNK, "a", "b"]
    assert tok.encode("c") == [0]


def test_save_load(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    path = tok.save(tmp_path / "tok.json")
    again = CharTokenizer.load(path)
    assert again.itos == tok.itos and again.encode(TEXT) == tok.encode(TEXT)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="空的"):
        CharTokenizer.from_text("   \n ")
    with pytest.raises(ValueError, match="超出了词表范围"):
        CharTokenizer.from_text(TEXT).decode([999])
    (tmp_path / "x.json").write_text('{"type": "Other"}', encoding="utf-8")
    with pytest.raises(ValueError, match="不是 CharTokenizer"):
        CharTokenizer.load(tmp_path / "x.json")
    (tmp_path / "gbk.json").write_bytes("中文".encode("gbk"))
    with pytest.raises(ValueError, match="UTF-8"):
        CharTokenizer.load(tmp_path / "gbk.json")
