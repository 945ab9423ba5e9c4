"""课程唯一的解码循环（course_lib.generate.decode）和唯一的采样参数检查（Sampling）。"""
import subprocess
import sys

import pytest
import torch

from course_lib import GPT, BigramLM, GPTConfig, Llama, LlamaConfig
from course_lib.device import eval_mode
from course_lib.generate import Sampling, decode, sample_next, stream


def _plain_loop(model, idx, n, temperature, top_k, seed, window, top_p=None, repetition_penalty=1.0):
    """最朴素的自回归循环（不带缓存，每步整段重算最后 window 个 token），用来核对 decode。"""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        logits = model(idx[:, -window:])[0]
        nxt = sample_next(logits[:, -1, :], temperature, top_k, gen, top_p=top_p,
                          repetition_penalty=repetition_penalty, prev_ids=idx)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@pytest.mark.parametrize("kind", ["bigram", "gpt", "llama"])
def test_every_model_decodes_through_the_same_loop(kind):
    torch.manual_seed(0)
    if kind == "bigram":
        model, window = BigramLM(40), 1
    elif kind == "gpt":
        model, window = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)), 8
    else:
        model, window = Llama(LlamaConfig(vocab_size=40, max_seq_len=8, dim=16, n_layers=1, n_heads=2, n_kv_heads=1)), 8
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    expected = _plain_loop(model, prompt, 20, 0.9, 10, 3, window, top_p=0.95, repetition_penalty=1.2)
    got = torch.cat([prompt, *decode(model, prompt, 20, Sampling(0.9, 10, 0.95, 1.2), seed=3, window=window)], dim=1)
    assert torch.equal(got, expected)                     # 窗口写满（20 > 8）以后仍然一致
    if kind != "llama":                                   # .generate 是同一个循环
        assert torch.equal(model.generate(prompt, 20, 0.9, 10, seed=3)[:, :3], prompt)


def test_llama_cache_and_window_rule_match_recompute():
    torch.manual_seed(1)
    model = Llama(LlamaConfig(vocab_size=50, max_seq_len=16, dim=32, n_layers=2, n_heads=4, n_kv_heads=2))
    prompt = list(range(1, 12))
    cached = list(stream(model, prompt, 30, temperature=0.8, seed=2, top_k=20))
    plain = list(stream(model, prompt, 30, temperature=0.8, seed=2, top_k=20, use_cache=False))
    assert cached == plain and cached == list(model.stream(prompt, 30, 0.8, 20, 2))


def test_stop_ids_end_every_sequence_and_stay_in_output():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16))
    free = list(stream(model, [1, 2], 12, temperature=0))
    stop = free[3]
    assert list(stream(model, [1, 2], 12, temperature=0, stop_ids={stop})) == free[:free.index(stop) + 1]


def test_decode_restores_training_mode_and_eval_mode_on_error():
    model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)).train()
    list(stream(model, [1, 2], 3, temperature=0))
    assert model.training
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training
            raise RuntimeError("评估到一半出错")
    assert model.training


@pytest.mark.parametrize("kwargs, needle", [
    (dict(top_p=1.5), "top_p"), (dict(top_p=0), "top_p"), (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(temperature="hot"), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
])
def test_sampling_is_checked_in_one_place(kwargs, needle):
    """同一个错误参数，在 Sampling、stream、Llama.stream、process_logits 和 ChatSession 里是同一句中文错误。"""
    from course_lib.generate import process_logits
    with pytest.raises(ValueError, match=needle) as direct:
        Sampling(**kwargs)
    model = Llama(LlamaConfig(vocab_size=30, max_seq_len=16, dim=16, n_layers=1, n_heads=2, n_kv_heads=1))
    for call in (lambda: stream(model, [1], 2, **kwargs), lambda: model.stream([1], 2, **kwargs),
                 lambda: process_logits(torch.zeros(1, 30), **kwargs)):
        with pytest.raises(ValueError) as other:
            call()
        assert str(other.value) == str(direct.value)


def test_greedy_is_deterministic_and_max_new_tokens_checked():
    model = Llama(LlamaConfig(vocab_size=30, max_seq_len=16, dim=16, n_layers=1, n_heads=2, n_kv_heads=1))
    assert list(stream(model, [1, 2], 5, temperature=0)) == list(stream(model, [1, 2], 5, temperature=0, seed=9))
    with pytest.raises(ValueError, match="max_new_tokens"):
        stream(model, [1, 2], 0)


@pytest.mark.parametrize("module", ["train", "chat", "reference", "start", "nbrun"])
def test_documented_commands_answer_help_in_chinese(module):
    """README 和各章写的 python -m course_lib.xxx 命令都还在，--help 退出码 0、说中文、不启动任何东西。"""
    out = subprocess.run([sys.executable, "-m", f"course_lib.{module}", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "用法" in out.stdout or "usage" in out.stdout.lower()
    assert any("\u4e00" <= c <= "\u9fff" for c in out.stdout) and "Traceback" not in out.stderr
    assert "found in sys.modules" not in out.stderr       # 模块不会被导入两遍（没有 runpy 的警告）


# ---------------------------------------------------------------- 编译的一步 + 固定大小的缓存（issue 15）
def test_compiled_decoding_gives_the_same_tokens(monkeypatch):
    # compile=True：torch.compile 编译 Llama.decode_step，缓存固定为整个窗口的大小；贪心和带种子的采样都与不编译时逐个 token 相同。
    # 编译失败（没有 C 编译器等）时提示一次、退回不编译，结果也相同
    import warnings

    from course_lib import generate
    from course_lib.chat_format import encode_chat
    from course_lib.chat_models import load_chat_model
    model, tok, _ = load_chat_model("chat")
    ids = encode_chat([{"role": "user", "content": "「画蛇添足」是什么意思？"}], tok, add_generation_prompt=True)
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=3, repetition_penalty=1.1)):
        assert list(model.stream(ids, 16, compile=True, **kw)) == list(model.stream(ids, 16, **kw)), kw
    dec = generate.BatchDecoder(model, slots=2, compile=True)
    assert dec.cache.static and dec.cache.capacity == model.config.max_seq_len
    for _ in range(2):
        dec.add(ids, 8, generate.GREEDY)
    got = {0: [], 1: []}
    while dec.active or dec.pending:
        for h, t, _ in dec.step():
            got[h].append(t)
    assert got[0] == got[1] == list(model.stream(ids, 8, temperature=0.0))

    def broken(m):
        def step(*a, **k):
            raise RuntimeError("没有 C 编译器（测试）")
        return step
    monkeypatch.setattr(generate, "compiled_step", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(model.stream(ids, 8, temperature=0.0, compile=True)) == got[0]
    assert any("改用不编译的版本" in str(w.message) for w in caught)
