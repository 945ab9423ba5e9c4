"""坏文件、坏输入：每一种都给出能照着修的中文错误，而且什么都不丢。

测的是 course_lib/files.py 的读写工具（原子写入、read_json / read_jsonl / read_safetensors、check_utf8）
和用它们的加载函数。其余的坏输入（对话、命令行、训练设置）在 tests/test_bad_input.py。
"""
import errno
import io
import json
import os
import re
import tempfile

import pytest
import torch
from safetensors.torch import save_file

from course_lib import files, hf
from course_lib.checkpoint import load_model, save_model
from course_lib.data import load_text_documents
from course_lib.files import (atomic_open, atomic_write_bytes, check_utf8, read_json, read_jsonl, read_safetensors,
                              read_text_utf8)
from course_lib.gpt import GPT, GPTConfig
from course_lib.hf import export_hf, import_hf
from course_lib.llama import Llama, LlamaConfig
from course_lib.lora import inject_lora, load_adapter, load_peft_adapter, save_adapter
from course_lib.sft_data import load_alpaca, load_dialogues
from course_lib.token_data import build_token_bin, load_token_bin, meta_path
from course_lib.tokenizer import BPETokenizer, CharTokenizer

GPT_CFG = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
LLAMA_CFG = dict(vocab_size=64, max_seq_len=16, dim=32, n_layers=1, n_heads=4)


def _llama(**overrides):
    torch.manual_seed(0)
    return Llama(LlamaConfig(**{**LLAMA_CFG, **overrides})).eval()


def _snapshot(folder):
    """文件夹里每个文件的相对路径 → 字节内容。"""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def bpe(small_bpe):
    return small_bpe(n_lines=200)


# ---------------------------------------------------------------- 文本：落单的代理字符、bytes
def test_lone_surrogates_get_the_utf8_error(bpe):
    char = CharTokenizer.from_text("你好世界")
    for encode in (bpe.encode, char.encode, lambda t: char.encode(t, unknown="error")):
        with pytest.raises(ValueError, match="不是合法的 UTF-8 文本.*export LANG"):
            encode("你好\ud800")
    with pytest.raises(ValueError, match="不是合法的 UTF-8 文本"):
        CharTokenizer.from_text("你好\udcff世界")  # 建词表时就拦下，而不是 save() 时才崩
    with pytest.raises(ValueError, match=r"用户输入 不是合法的 UTF-8 文本（第 2 个字符附近"):
        check_utf8("你好\udce4\udcbd", "用户输入")  # surrogateescape 把 GBK 字节变成的样子
    assert check_utf8("你好 😀") == "你好 😀"
    assert bpe.decode(bpe.encode("你好 😀")) == "你好 😀"


def test_char_tokenizer_refuses_bytes():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TypeError, match="encode 需要 str，收到的是 bytes.*decode_utf8"):
        tok.encode(b"abc")
    assert tok.encode("abc") == [1, 2, 3]


def test_build_token_bin_refuses_a_whole_string(bpe, tmp_path):
    with pytest.raises(TypeError, match=r"一整个 str（10 个字符）.*corpus_documents.*splitlines"):
        build_token_bin("今天天气很好。\n明天", bpe, tmp_path / "train.bin", progress=False)
    assert not list(tmp_path.iterdir())
    meta = build_token_bin("今天天气很好。\n明天".splitlines(), bpe, tmp_path / "train.bin", progress=False)
    assert meta["n_documents"] == 2


# ---------------------------------------------------------------- 写：磁盘满、只读、路径上是个文件
def test_disk_full_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    monkeypatch.setattr(files.os, "fsync", _disk_full)
    with pytest.raises(OSError, match=f"磁盘空间不足，写不下 {re.escape(str(target))}.*清理磁盘空间") as info:
        atomic_write_bytes(target, b"new")
    assert type(info.value) is OSError and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_disk_full_while_writing_inside_the_with_block(tmp_path):
    target = tmp_path / "train.bin"
    with pytest.raises(OSError, match="磁盘空间不足") as info:
        with atomic_open(target) as f:
            f.write(b"12")
            _disk_full()
    assert info.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="^别的文件$"):  # 与写这个文件无关的 OSError 原样抛出
        with atomic_open(target):
            raise FileNotFoundError("别的文件")


def test_read_only_folder(tmp_path, monkeypatch):
    def read_only(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)  # 测试以 root 运行时 chmod 拦不住，直接模拟
    with pytest.raises(PermissionError, match=f"没有权限写入 {re.escape(str(tmp_path / 'm'))}.*可写的文件夹") as info:
        save_model(GPT(GPTConfig(**GPT_CFG)), tmp_path / "m")
    assert info.value.errno == errno.EACCES


def test_path_that_is_a_file_or_a_folder(tmp_path, bpe):
    blocker = tmp_path / "runs"
    blocker.write_text("我是一个文件")
    with pytest.raises(FileExistsError, match=f"{re.escape(str(blocker))} 是一个文件，不是文件夹"):
        save_model(GPT(GPTConfig(**GPT_CFG)), blocker)
    with pytest.raises(NotADirectoryError, match=f"{re.escape(str(blocker))} 是一个文件，不是文件夹"):
        build_token_bin(["你好"], bpe, blocker / "tokens" / "train.bin", progress=False)
    (tmp_path / "train.bin").mkdir()
    with pytest.raises(IsADirectoryError, match="train.bin 是一个文件夹，不能当成文件来写"):
        build_token_bin(["你好"], bpe, tmp_path / "train.bin", progress=False)
    assert blocker.read_text() == "我是一个文件"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "train.bin"]  # 没有留下临时文件


# ---------------------------------------------------------------- export_hf：整个文件夹要么全换，要么不动
def test_export_hf_failing_midway_leaves_the_old_export_untouched(tmp_path, monkeypatch):
    folder = export_hf(_llama(vocab_size=48), tmp_path / "hf")
    (folder / "README.md").write_text("我的模型卡")
    before = _snapshot(folder)
    real, calls = os.fsync, []

    def fsync(fd):  # 第一次 fsync 是权重，第二次是 config.json：写到 config.json 时磁盘满了
        calls.append(fd)
        return _disk_full() if len(calls) == 2 else real(fd)
    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(OSError, match=f"磁盘空间不足.*config.json.*{re.escape(str(folder))} 保持原样"):
        export_hf(_llama(vocab_size=64), folder)
    assert len(calls) == 2 and _snapshot(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # 临时文件夹删掉了

    monkeypatch.setattr(files.os, "fsync", real)
    (folder / "tokenizer.json").write_text("{}")  # 上一次导出留下的分词器：新导出没有分词器，它必须消失
    export_hf(_llama(vocab_size=64), folder)
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 64
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                        "model.safetensors"]
    assert (folder / "README.md").read_text() == "我的模型卡"
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_export_hf_with_tokenizer_never_mixes_old_weights_and_new_tokenizer(tmp_path, monkeypatch, bpe, small_bpe):
    pytest.importorskip("transformers")
    old_tok, new_tok = bpe.save(tmp_path / "old_tok"), small_bpe(n_lines=120).save(tmp_path / "new_tok")
    folder = export_hf(_llama(vocab_size=bpe.vocab_size), tmp_path / "hf", sp_model_path=old_tok / "tokenizer.model")
    before = _snapshot(folder)
    real = hf.atomic_write_bytes

    def fail_on_weights(path, data):
        if path.name == "model.safetensors":
            _disk_full()
        return real(path, data)
    monkeypatch.setattr(hf, "atomic_write_bytes", fail_on_weights)
    new_vocab = BPETokenizer.load(new_tok).vocab_size
    with pytest.raises(OSError, match="磁盘空间不足"):  # 分词器已经写好了，权重写不下
        export_hf(_llama(vocab_size=new_vocab), folder, sp_model_path=new_tok / "tokenizer.model")
    assert _snapshot(folder) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_hf_into_a_file(tmp_path):
    (tmp_path / "hf").write_text("x")
    with pytest.raises(FileExistsError, match="是一个文件，不是文件夹"):
        export_hf(_llama(), tmp_path / "hf")


# ---------------------------------------------------------------- 坏掉的 JSON：文件名、行号、怎么重新生成
BROKEN = '{\n  "type": "CharTokenizer",\n  "chars": ["a" "b"]\n}\n'


def _break_json(path, text=BROKEN):
    path.write_text(text, encoding="utf-8")
    return path


def _json_error(path, line, fix):
    return f"{re.escape(str(path))}.*不是合法的 JSON.*第 {line} 行第 \\d+ 列.*{fix}"


def test_shared_json_readers(tmp_path):
    path = _break_json(tmp_path / "a.json")
    with pytest.raises(ValueError, match=r"配置 .*a.json 不是合法的 JSON：第 3 行第 17 列：缺少逗号 ,"
                                         r".*\"b\".*重新生成它"):
        read_json(path, "配置", "请重新生成它。")
    with pytest.raises(ValueError, match="文件是空的"):
        read_json(_break_json(tmp_path / "empty.json", ""))
    with pytest.raises(ValueError, match="第 1 行第 12 列.*被截断了"):
        read_json(_break_json(tmp_path / "cut.json", '{"a": [1, 2'))
    lines = _break_json(tmp_path / "a.jsonl", '{"a": 1}\r\n\r\n{"a": 2,}\n{"a": "\u2028"}\n')
    with pytest.raises(ValueError, match=r"a.jsonl 第 3 行不是合法的 JSON：第 9 列：.*键名"):
        read_jsonl(lines)
    _break_json(lines, '{"a": 1}\r\n\r\n{"a": "x\u2028y"}\n')
    assert read_jsonl(lines, line_numbers=True) == [(1, {"a": 1}), (3, {"a": "x\u2028y"})]
    with pytest.raises(FileNotFoundError, match="找不到分词器文件 .*nothing.json，请检查路径"):
        read_text_utf8(tmp_path / "nothing.json", "分词器文件")
    with pytest.raises(IsADirectoryError, match="是一个文件夹，不是文件"):
        read_json(tmp_path)


def test_broken_json_in_every_loader(tmp_path, bpe):
    # 语料 .jsonl / .json
    corpus = _break_json(tmp_path / "wiki.jsonl", '{"text": "一"}\n{"text": "二"\n')
    with pytest.raises(ValueError, match=r"wiki.jsonl 第 2 行不是合法的 JSON：第 \d+ 列.*重新下载"):
        load_text_documents(str(corpus))
    with pytest.raises(ValueError, match=_json_error(_break_json(tmp_path / "wiki.json"), 3, "重新下载")):
        load_text_documents(str(tmp_path / "wiki.json"))
    # CharTokenizer
    with pytest.raises(ValueError, match=_json_error(_break_json(tmp_path / "char.json"), 3, "from_text")):
        CharTokenizer.load(tmp_path / "char.json")
    # BPETokenizer 的元数据
    tok_dir = bpe.save(tmp_path / "tok")
    with pytest.raises(ValueError, match=_json_error(_break_json(tok_dir / BPETokenizer.META_FILE), 3,
                                                     "BPETokenizer.train")):
        BPETokenizer.load(tok_dir)
    # token .bin 的元数据
    build_token_bin(["你好"], bpe, tmp_path / "train.bin", progress=False)
    _break_json(meta_path(tmp_path / "train.bin"))
    with pytest.raises(ValueError, match=_json_error(meta_path(tmp_path / "train.bin"), 3, "build_token_bin")):
        load_token_bin(tmp_path / "train.bin")
    # load_model 的 config.json
    folder = save_model(GPT(GPTConfig(**GPT_CFG)), tmp_path / "m")
    with pytest.raises(ValueError, match=_json_error(_break_json(folder / "config.json"), 3, "save_model")):
        load_model(folder)
    # import_hf 的 config.json
    hf_dir = export_hf(_llama(), tmp_path / "hf")
    with pytest.raises(ValueError, match=_json_error(_break_json(hf_dir / "config.json"), 3, "重新下载")):
        import_hf(hf_dir)
    # 适配器（course_lib 的和 peft 的）
    model = _llama()
    inject_lora(model, targets=["q_proj"], r=2)
    adapter = save_adapter(model, tmp_path / "lora")
    with pytest.raises(ValueError, match=_json_error(_break_json(adapter / "adapter_config.json"), 3, "save_adapter")):
        load_adapter(_llama(), adapter)
    (adapter / "adapter_model.safetensors").write_bytes((adapter / "adapter.safetensors").read_bytes())
    with pytest.raises(ValueError, match=_json_error(adapter / "adapter_config.json", 3, "save_pretrained")):
        load_peft_adapter(_llama(), adapter)
    # SFT 数据
    dialogues = _break_json(tmp_path / "d.jsonl", '{"id": "a", "messages": []}\n{"id": "b", "messages": [}\n')
    with pytest.raises(ValueError, match=r"d.jsonl 第 2 行不是合法的 JSON：第 \d+ 列.*git checkout"):
        load_dialogues(dialogues)
    with pytest.raises(ValueError, match=_json_error(_break_json(tmp_path / "alpaca.json"), 3, "重新下载")):
        load_alpaca(tmp_path / "alpaca.json")


def test_broken_snownlp_cache(tmp_data_dir):
    pytest.importorskip("snownlp")
    from course_lib import baselines
    cache = baselines._cache_path()
    cache.parent.mkdir(parents=True)
    _break_json(cache, '{"version": 1, "words": {"好": ["好"]')
    with pytest.raises(ValueError, match=_json_error(cache, 1, "删掉它")):
        baselines.SnowNLPSentiment()
    _break_json(cache, '{"version": 1}')
    with pytest.raises(ValueError, match="没有 \"words\".*删掉它"):
        baselines.SnowNLPSentiment()


def test_json_that_parses_but_has_the_wrong_shape(tmp_path, bpe):
    with pytest.raises(ValueError, match="不是 CharTokenizer 保存的文件"):
        CharTokenizer.load(_break_json(tmp_path / "list.json", "[1, 2]"))
    with pytest.raises(ValueError, match="chars.*字符组成的列表"):
        CharTokenizer.load(_break_json(tmp_path / "c.json", '{"type": "CharTokenizer"}'))
    build_token_bin(["你好"], bpe, tmp_path / "train.bin", progress=False)
    meta = json.loads(meta_path(tmp_path / "train.bin").read_text())
    del meta["n_tokens"]
    meta_path(tmp_path / "train.bin").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"不完整：缺少 \['n_tokens'\].*build_token_bin"):
        load_token_bin(tmp_path / "train.bin")


# ---------------------------------------------------------------- load_model：每种问题一条不同的错误
def test_load_model_tells_the_cases_apart(tmp_path):
    folder = save_model(GPT(GPTConfig(**GPT_CFG)), tmp_path / "m")
    config, weights = (folder / "config.json").read_bytes(), (folder / "model.safetensors").read_bytes()
    messages = set()

    def error(exc, match):
        with pytest.raises(exc, match=match) as info:
            load_model(folder)
        messages.add(str(info.value).replace(str(folder), "…"))

    with pytest.raises(FileNotFoundError, match="找不到文件夹 .*路径不存在"):
        load_model(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="是一个文件，不是文件夹.*请传它所在的文件夹"):
        load_model(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    error(FileNotFoundError, "有 config.json，却缺少权重文件 model.safetensors")
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").unlink()
    error(FileNotFoundError, "有权重 model.safetensors，却缺少 config.json")
    (folder / "model.safetensors").unlink()
    error(FileNotFoundError, r"没有 config.json 和 model.safetensors.*（空）")
    assert len(messages) == 3  # 三种情况，三条不同的消息

    (folder / "model.safetensors").write_bytes(weights)
    meta = json.loads(config)
    (folder / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"], "n_embed": 64}}))
    error(ValueError, r"GPTConfig 不认识的字段 \['n_embed'\]")
    (folder / "config.json").write_text(json.dumps({**meta, "config": {"n_layer": 2}}))
    error(ValueError, r"缺少必填的字段 \['vocab_size'\]")
    (folder / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"], "vocab_size": 60}}))
    error(ValueError, r"结构不符（1 个张量的形状不同）：wte.weight 在 model.safetensors 里是 \(50, 32\)，"
                      r"按 config.json 应该是 \(60, 32\)")


def test_truncated_or_pickled_weights(tmp_path):
    folder = save_model(GPT(GPTConfig(**GPT_CFG)), tmp_path / "m")
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"损坏或不完整.*应有 [\d,]+ 字节，实际只有 [\d,]+ 字节：被截断了"):
        load_model(folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="文件是空的"):
        load_model(folder)
    buffer = io.BytesIO()
    torch.save({"wte.weight": torch.zeros(2)}, buffer)
    (folder / "model.safetensors").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="不是 safetensors 文件.*zip.*pickle"):
        load_model(folder)
    with pytest.raises(FileNotFoundError, match="找不到权重文件"):
        read_safetensors(tmp_path / "none.safetensors")


# ---------------------------------------------------------------- import_hf
def test_import_hf_bad_weights_config_and_shapes(tmp_path, monkeypatch):
    folder = export_hf(_llama(), tmp_path / "hf")
    config, weights = json.loads((folder / "config.json").read_text()), (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:100])
    with pytest.raises(ValueError, match="权重文件 .*model.safetensors 损坏或不完整.*被截断了.*重新下载"):
        import_hf(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file at all" * 20)
    with pytest.raises(ValueError, match="不是 safetensors 文件"):
        import_hf(folder)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "intermediate_size"}))
    with pytest.raises(ValueError, match=r"config.json 缺少 Llama 结构必需的字段 \['intermediate_size'\]"):
        import_hf(folder)
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 80}))
    with pytest.raises(ValueError, match=r"形状不同.*embed_tokens.weight 在权重文件里是 \(64, 32\)，"
                                         r"按 config.json 应该是 \(80, 32\)"):
        import_hf(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    shard = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    with pytest.raises(FileNotFoundError, match=r"缺少 .*分片 \['model-00001-of-00002.safetensors'\]"):
        import_hf(folder)


def test_import_hf_pickle_only_folder_is_never_unpickled(tmp_path, monkeypatch):
    folder = export_hf(_llama(), tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": torch.zeros(64, 32)}, folder / "pytorch_model.bin")

    def no_unpickling(*_args, **_kwargs):
        raise AssertionError("import_hf 不应该调用 torch.load")
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(FileNotFoundError, match=r"(?s)只有 PyTorch 的 pickle 权重（pytorch_model.bin）.*可信的环境"
                                                r".*save_pretrained\(.*safe_serialization=True\)"):
        import_hf(folder)


def test_import_hf_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="找不到模型文件夹 .*路径不存在"):
        import_hf(tmp_path / "nothing")


# ---------------------------------------------------------------- 适配器
def test_adapter_loaders_bad_files(tmp_path):
    model = _llama()
    inject_lora(model, targets=["q_proj"], r=2)
    folder = save_adapter(model, tmp_path / "lora")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "base_shapes"}))
    with pytest.raises(ValueError, match=r"缺少字段 \['base_shapes'\].*save_adapter"):
        load_adapter(_llama(), folder)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    data = (folder / "adapter.safetensors").read_bytes()
    (folder / "adapter.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="适配器权重 .*损坏或不完整.*被截断了.*save_adapter"):
        load_adapter(_llama(), folder)

    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 2)},
              peft_dir / "adapter_model.safetensors")
    (peft_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    with pytest.raises(ValueError, match=r"缺少字段 \['lora_alpha'\]"):
        load_peft_adapter(_llama(), peft_dir)
    (peft_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    (peft_dir / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="peft 适配器权重 .*文件是空的"):
        load_peft_adapter(_llama(), peft_dir)


def test_os_error_class_and_errno_are_kept():
    for exc, code in ((PermissionError, errno.EACCES), (OSError, errno.EROFS), (OSError, errno.EIO)):
        new = files.write_error(exc(code, os.strerror(code)), os.path.join(tempfile.gettempdir(), "x", "y.bin"))
        assert type(new) is exc and new.errno == code and "y.bin" in str(new) and not str(new).startswith("[Errno")
