"""course_lib.hf_corpus：Hugging Face 数据集 → 清洗、划分 → train.bin / val.bin → python -m course_lib.train --tokens。

只用本地的小文件 tests/fixtures/hf_corpus.jsonl（经 datasets.load_dataset("json", streaming=True) 读取），不联网。
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datasets")

from course_lib import load_model  # noqa: E402
from course_lib.cli.pretrain import main as train_main  # noqa: E402
from course_lib.data import normalize_text, split_of  # noqa: E402
from course_lib.hf_corpus import load_token_folder, main, prepare_hf_corpus  # noqa: E402
from course_lib.token_data import load_token_bin  # noqa: E402
from course_lib.tokenizer import BPETokenizer  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "hf_corpus.jsonl"
RAW = [json.loads(line)["text"] for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
CLEAN = [normalize_text(t) for t in RAW if t is not None and normalize_text(t)]
VAL_FRACTION = 0.2  # 几十篇文档：1% 的话 val 一篇都分不到


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return BPETokenizer.train(CLEAN, tmp_path_factory.mktemp("tok"), vocab_size=BPETokenizer.min_vocab_size(CLEAN) + 30)


def _prepare(tok, out, **kwargs):
    return prepare_hf_corpus("json", tok, out, data_files=str(FIXTURE), val_fraction=VAL_FRACTION, progress=False,
                             **kwargs)


def _documents(ids, tok):
    """.bin 里的 token → 一篇篇文档（每篇以 eos 结尾）。"""
    ids = np.asarray(ids).tolist()
    assert ids and ids[-1] == tok.eos_id
    docs, start = [], 0
    for i, t in enumerate(ids):
        if t == tok.eos_id:
            docs.append(tok.decode(ids[start:i]))
            start = i + 1
    return docs


def test_fixture_is_small_and_has_dirty_records():
    assert FIXTURE.stat().st_size < 10_000
    assert None in RAW and any(t is not None and not t.strip() for t in RAW)  # 空文档要被丢掉
    assert any("２０２３" in (t or "") for t in RAW)  # 全角数字要转成半角
    assert len(CLEAN) == len(RAW) - 2 and "今年 2023 年的第一场雪来得比往年早。" in CLEAN


def test_round_trip_and_deterministic_disjoint_split(tok, tmp_path):
    paths = _prepare(tok, tmp_path / "a")
    assert paths == {"train": tmp_path / "a" / "train.bin", "val": tmp_path / "a" / "val.bin"}
    expected = {s: [d for d in CLEAN if split_of("hf:" + d, 20) == s] for s in ("train", "val")}
    assert expected["train"] and expected["val"]
    for s in ("train", "val"):
        ids = load_token_bin(paths[s], tok)
        # 和 build_token_bin 的写法完全一样：每篇分词、后面接一个 eos，首尾相接
        assert ids.tolist() == [t for d in expected[s] for t in tok.encode(d, eos=True)]
        assert _documents(ids, tok) == expected[s]  # 解码回来就是清洗后的文本
    train, val = set(expected["train"]), set(expected["val"])
    assert not train & val and train | val == set(CLEAN)
    # 再跑一次：逐字节相同
    again = _prepare(tok, tmp_path / "b")
    for s in ("train", "val"):
        assert again[s].read_bytes() == paths[s].read_bytes()
    source = json.loads((tmp_path / "a" / "source.json").read_text(encoding="utf-8"))
    assert source["train_n_documents"] == len(expected["train"]) and source["val_n_documents"] == len(expected["val"])
    loaded, folder_paths = load_token_folder(tmp_path / "a")
    assert loaded.fingerprint == tok.fingerprint and folder_paths == paths


def test_max_docs(tok, tmp_path):
    _prepare(tok, tmp_path, max_docs=20)
    source = json.loads((tmp_path / "source.json").read_text(encoding="utf-8"))
    assert source["train_n_documents"] + source["val_n_documents"] == 20
    docs = [d for s in ("train", "val") for d in _documents(load_token_bin(tmp_path / f"{s}.bin", tok), tok)]
    assert sorted(docs) == sorted(CLEAN[:20])  # 前 20 篇（清洗后非空的），够数就停


def test_clear_errors(tok, tmp_path, monkeypatch, capsys):
    with pytest.raises(KeyError, match="没有字段 'completion'.*'text'.*text_field"):
        _prepare(tok, tmp_path, text_field="completion")
    assert not (tmp_path / "train.bin").exists()
    with pytest.raises(ValueError, match="0.01 的整数倍"):
        prepare_hf_corpus("json", tok, tmp_path, data_files=str(FIXTURE), val_fraction=0.015)
    with pytest.raises(ValueError, match="没有读到 train 的文档"):
        _prepare(tok, tmp_path, max_docs=1)  # 第一篇恰好分进 val
    with pytest.raises(ValueError, match="val 一篇文档也没有.*max_docs"):
        prepare_hf_corpus("json", tok, tmp_path, data_files=str(FIXTURE), max_docs=5, progress=False)  # 1%
    with pytest.raises(RuntimeError, match="无法读取数据集"):
        prepare_hf_corpus("json", tok, tmp_path, data_files=str(tmp_path / "没有这个文件.jsonl"))
    # 命令行：一行中文错误，退出码 1
    assert main(["--dataset", "json", "--data_files", str(FIXTURE), "--tokenizer", str(tmp_path / "无"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "错误：" in capsys.readouterr().err
    tok.save(tmp_path / "tok")
    assert main(["--dataset", "json", "--data_files", str(FIXTURE), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "o"), "--text_field", "completion"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("错误：第 1 条记录没有字段 'completion'") and len(err.strip().splitlines()) == 1
    # 没装 datasets：告诉学习者怎么装
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ModuleNotFoundError, match="pip install datasets"):
        _prepare(tok, tmp_path)


def test_cli_then_train_with_tokens(tok, tmp_path, tmp_data_dir, capsys):
    tok.save(tmp_path / "tok")
    tokens = tmp_path / "tokens"
    assert main(["--dataset", "json", "--data_files", str(FIXTURE), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tokens), "--val_fraction", "0.2"]) == 0
    assert "--tokens" in capsys.readouterr().out
    args = ["--profile", "tiny", "--tokens", str(tokens), "--block_size", "16", "--dim", "32", "--n_layers", "1",
            "--n_heads", "2", "--n_kv_heads", "1", "--batch_size", "2", "--grad_accum_steps", "1", "--max_steps", "3",
            "--warmup_steps", "0", "--eval_interval", "3", "--eval_iters", "1", "--checkpoint_interval", "3"]
    out = tmp_path / "run"
    assert train_main(["--out", str(out), *args]) == 0
    log = capsys.readouterr().out
    assert "自带的分词器" in log and "训练完成" in log
    model, saved = load_model(out / "model"), BPETokenizer.load(out / "model")
    assert saved.fingerprint == tok.fingerprint and model.config.vocab_size == tok.vocab_size  # 不是 tiny 的 4800
    record = json.loads((out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["tokens_dir"] == str(tokens) and record["end_step"] == 3
    assert not (tmp_data_dir / "runs").exists()  # 没有去准备课程语料

    # 换了分词器的 token 文件夹：训练前就报错（指纹对不上），退出码 2
    other = BPETokenizer.train(CLEAN[::2], tmp_path / "other", vocab_size=BPETokenizer.min_vocab_size(CLEAN[::2]) + 10)
    other.save(tokens / "tokenizer")
    assert train_main(["--out", str(tmp_path / "run2"), *args]) == 2
    assert "另一个分词器" in capsys.readouterr().err
    # 同一个 --out 换用另一个分词器写的 token 文件夹：不悄悄覆盖分词器
    _prepare(other, tmp_path / "tokens2")
    assert train_main(["--out", str(out), *args[:2], "--tokens", str(tmp_path / "tokens2"), *args[4:]]) == 1
    assert "请换一个 --out 目录" in capsys.readouterr().err
    assert BPETokenizer.load(out / "tokenizer").fingerprint == tok.fingerprint
