import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from course_lib import GPT, GPTConfig, TrainConfig, Trainer, load_corpus, token_data
from course_lib.token_data import build_token_bin, load_token_bin, meta_path, prepare_pretraining_data
from course_lib.tokenizer import BPETokenizer
from course_lib.train import get_batch


@pytest.fixture(scope="module")
def news_docs():
    return load_corpus("news", "val").split("\n")


@pytest.fixture(scope="module")
def tok(news_docs):
    return BPETokenizer.train(news_docs, vocab_size=3000)


def _build(docs, tok, path):
    return build_token_bin(docs, tok, path, chunk_tokens=1000, progress=False)  # 小块：测到分块写入


def test_round_trip(tok, news_docs, tmp_path):
    docs = news_docs[:300] + ["emoji 😀 和空格  结尾 "]
    meta = _build(iter(docs), tok, tmp_path / "train.bin")  # 生成器也行：只遍历一次
    data = load_token_bin(tmp_path / "train.bin", tok)
    assert isinstance(data, np.memmap) and data.dtype == np.uint16 and len(data) == meta["n_tokens"]
    assert meta["n_documents"] == len(docs) and meta["tokenizer_fingerprint"] == tok.fingerprint
    assert (tmp_path / "train.bin").stat().st_size == 2 * meta["n_tokens"]
    # eos 之间解码出来正好是原来的文档
    ends = np.flatnonzero(data == tok.eos_id)
    assert len(ends) == len(docs) and ends[-1] == len(data) - 1
    starts = np.r_[0, ends[:-1] + 1]
    assert [tok.decode(data[s:e]) for s, e in zip(starts, ends)] == docs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "train.json"]  # 没有临时文件


def test_works_with_get_batch_and_trainer(tok, news_docs, tmp_path):
    _build(news_docs[:200], tok, tmp_path / "train.bin")
    _build(news_docs[200:260], tok, tmp_path / "val.bin")
    train, val = load_token_bin(tmp_path / "train.bin", tok), load_token_bin(tmp_path / "val.bin", tok)
    x, y = get_batch(train, 16, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
    cfg = TrainConfig(max_steps=3, batch_size=4, block_size=16, eval_interval=3, eval_iters=2,
                      progress=False, log=False, device="cpu")
    history = Trainer(model, train, val, cfg).fit()
    assert len(history.step_loss) == 3 and np.isfinite(history.val_loss[-1])


def test_truncated_file(tok, news_docs, tmp_path):
    path = tmp_path / "train.bin"
    _build(news_docs[:50], tok, path)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="截断"):
        load_token_bin(path)


def test_changed_content_is_caught(tok, news_docs, tmp_path):
    path = tmp_path / "train.bin"
    _build(news_docs[:50], tok, path)
    data = bytearray(path.read_bytes())
    data[:2] = b"\x05\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_token_bin(path)
    assert len(load_token_bin(path, verify=False)) == len(data) // 2


def test_other_tokenizer_is_refused(tok, news_docs, tmp_path):
    path = tmp_path / "train.bin"
    _build(news_docs[:50], tok, path)
    other = BPETokenizer.train(news_docs, vocab_size=3100)
    with pytest.raises(ValueError, match="另一个分词器.*重新运行 build_token_bin"):
        load_token_bin(path, other)


def test_missing_files_and_bad_metadata(tok, news_docs, tmp_path):
    path = tmp_path / "train.bin"
    with pytest.raises(FileNotFoundError, match="prepare_pretraining_data"):
        load_token_bin(path)
    _build(news_docs[:20], tok, path)
    meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    meta_path(path).write_text(json.dumps({**meta, "dtype": "int32"}), encoding="utf-8")
    with pytest.raises(ValueError, match="uint16"):
        load_token_bin(path)
    meta_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="元数据"):
        load_token_bin(path)


def test_build_refuses_bad_inputs_and_leaves_no_temp_files(tok, tmp_path):
    big = SimpleNamespace(vocab_size=70_000, fingerprint="x", eos_id=1)
    with pytest.raises(ValueError, match="uint16"):
        build_token_bin(["你好"], big, tmp_path / "a.bin")
    with pytest.raises(TypeError, match="BPETokenizer"):
        build_token_bin(["你好"], object(), tmp_path / "a.bin")
    with pytest.raises(ValueError, match="空的"):
        build_token_bin([], tok, tmp_path / "a.bin", progress=False)

    def docs_then_crash():
        yield "第一篇"
        raise RuntimeError("读到一半出错")

    path = tmp_path / "b.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="读到一半"):
        build_token_bin(docs_then_crash(), tok, path, progress=False)
    assert path.read_bytes() == b"old"  # 旧文件原样保留
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_prepare_pretraining_data(tok, news_docs, tmp_path, monkeypatch):
    calls = []

    def fake_corpus(name, split):
        calls.append((name, split))
        return news_docs[:40] if split == "train" else news_docs[40:50]

    monkeypatch.setattr(token_data, "corpus_documents", fake_corpus)
    paths = prepare_pretraining_data(tok, tmp_path / "tokens", corpus="news", progress=False)
    assert calls == [("news", "train"), ("news", "val")]
    assert load_token_bin(paths["train"], tok)[-1] == tok.eos_id
    prepare_pretraining_data(tok, tmp_path / "tokens", corpus="news", progress=False)
    assert len(calls) == 2  # 文件还能用：直接复用，不重新分词
    paths["val"].write_bytes(b"")
    prepare_pretraining_data(tok, tmp_path / "tokens", corpus="news", progress=False)
    assert calls[-1] == ("news", "val") and len(load_token_bin(paths["val"], tok)) > 0
