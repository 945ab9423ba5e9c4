"""坏输入得到一行能照着修的中文错误（命令行、训练设置、模型输入、对话）；见 issue「Every bad input gets a clear Chinese error」。
读文件类的坏输入（损坏的 JSON、权重、磁盘写满）在 tests/test_bad_input_files.py。"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib import GPT, GPTConfig, Llama, LlamaConfig, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
CJK = lambda s: any("\u4e00" <= c <= "\u9fff" for c in s)  # noqa: E731


def _run(module, *args, env=None, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT, stdin=subprocess.DEVNULL)


def _one_chinese_line(r, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and CJK(r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- python -m course_lib.start
def test_start_bad_profile_is_one_chinese_line():
    r = _run("course_lib.start", "--check", env={"COURSE_PROFILE": "xxx"})
    _one_chinese_line(r)
    assert "不认识的 profile" in r.stderr


def test_start_as_root_passes_allow_root(monkeypatch):
    from course_lib.cli import start
    calls = []
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(start.shutil, "which", lambda name: "/usr/bin/jupyter")
    monkeypatch.setattr(start.os, "geteuid", lambda: 0)
    monkeypatch.setattr(start.os, "execv", lambda path, args: calls.append(args))
    assert start.main([]) == 0
    assert calls and calls[0][-1] == "--allow-root"


# ---------------------------------------------------------------- python -m course_lib.train
@pytest.mark.parametrize("args, needle", [(["--out", ""], "--out 不能是空的"), (["--out", "README.md"], "是一个文件"),
                                          (["--out", "x", "--max_steps", "2.5"], "max_steps"),
                                          (["--help", "x"], None)])
def test_train_cli_bad_arguments(args, needle):
    r = _run("course_lib.train", "--profile", "tiny", *args)
    if needle is None:                    # --help 在哪里都行
        assert r.returncode == 0 and "用法" in r.stdout
        return
    _one_chinese_line(r)
    assert needle in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="这台机器有 CUDA")
def test_train_cli_cuda_without_gpu():
    r = _run("course_lib.train", "--profile", "tiny", "--out", "/tmp/never_written", env={"COURSE_DEVICE": "cuda"})
    _one_chinese_line(r)
    assert "CUDA" in r.stderr and not Path("/tmp/never_written").exists()


# ---------------------------------------------------------------- python -m course_lib.chat
@pytest.mark.parametrize("args, needle", [
    (["--device", "tpu"], "不认识的设备"), (["--temperature", "abc"], "不是合法的 float"), (["--bogus"], "不认识的参数"),
    pytest.param(["--device", "cuda"], "CUDA", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="有 CUDA")),
])
def test_chat_cli_bad_arguments(args, needle):
    r = _run("course_lib.chat", *args)
    _one_chinese_line(r)
    assert needle in r.stderr


def test_chat_refuses_pickle_only_folder(tmp_path):
    from course_lib.chat_models import load_chat_model
    (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle we will ever open")
    with pytest.raises(ValueError, match="safetensors") as e:
        load_chat_model(tmp_path)
    assert "weights_only=False" not in str(e.value)


def test_lone_surrogates_get_the_utf8_error_and_the_conversation_survives(small_bpe):
    """终端不是 UTF-8 时，input() 用 surrogateescape 把坏字节变成落单的代理字符：要给中文错误，对话不丢。"""
    from course_lib.chat import ChatSession
    from course_lib.chat_ui import repl
    tok = small_bpe()
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, max_seq_len=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1))
    s = ChatSession(model, tok, max_new_tokens=3, seed=0)
    s.chat("你好")
    with pytest.raises(ValueError, match="UTF-8"):
        s.chat("坏字节\udcff")
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode("\ud800")
    lines = iter(["再来\udce4\udcbd", "/system 新\udcff提示", "谢谢", None])
    out = []

    class Out:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass
    assert repl(s, lambda prompt: next(lines), Out()) == 1          # 两条坏输入报错，第三条照常回复
    text = "".join(out)
    assert text.count("错误：") == 2 and "UTF-8" in text
    assert len(s.history) == 4 and s.history[0]["content"] == "你好"  # 之前的对话还在


# ---------------------------------------------------------------- 训练设置与模型输入
@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_steps=2.5), "max_steps 必须是正整数"), (dict(max_steps="10"), "max_steps 必须是正整数"),
    (dict(batch_size=True), "batch_size 必须是正整数"), (dict(lr="1e-3"), "lr"), (dict(seed=1.5), "seed 必须是整数"),
    (dict(betas=(0.9,)), "betas"), (dict(grad_clip=-1.0), "grad_clip"),
])
def test_train_config_types(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**kwargs)


def test_model_configs_refuse_bools_and_floats():
    with pytest.raises(ValueError, match="vocab_size 必须是正整数"):
        GPTConfig(vocab_size=True)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(vocab_size=10, dropout="0.1")
    with pytest.raises(ValueError, match="dim 必须是正整数"):
        LlamaConfig(vocab_size=10, dim=64.0)


def test_token_ids_outside_the_vocabulary():
    gpt = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    llama = Llama(LlamaConfig(vocab_size=10, max_seq_len=8, dim=8, n_layers=1, n_heads=2, n_kv_heads=1))
    for model in (gpt, llama):
        with pytest.raises(ValueError, match="token id 12 超出了词表.*vocab_size=10"):
            model(torch.tensor([[3, 12]]))
    with pytest.raises(ValueError, match="train_data 里有 token id 19.*vocab_size=10"):
        Trainer(gpt, torch.arange(20), None, TrainConfig(block_size=8, batch_size=2, progress=False))


@pytest.mark.parametrize("data, needle", [("abc" * 100, "收到 str"), (torch.randn(100), "float32"),
                                          ([1, 2, 3] * 50, "收到 list"), (torch.zeros(4, 50, dtype=torch.long), "形状")])
def test_trainer_refuses_data_that_is_not_tokens(data, needle):
    gpt = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match=needle):
        Trainer(gpt, data, None, TrainConfig(block_size=8, batch_size=2, progress=False))


def test_load_sft_model_shows_progress_when_it_trains(tmp_data_dir, monkeypatch, capsys):
    from course_lib import sft
    seen = {}
    monkeypatch.setattr(sft, "build_sft_model", lambda **kw: seen.update(kw) or (_ for _ in ()).throw(RuntimeError("停")))
    with pytest.raises(RuntimeError, match="停"):
        sft.load_sft_model()
    assert seen == {"progress": True} and "进度条" in capsys.readouterr().out
