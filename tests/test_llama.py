import math

import pytest
import torch

from course_lib import TrainConfig, Trainer, load_model, save_model
from course_lib.generate import generate_tokens, sample_next
from course_lib.llama import Llama, LlamaConfig, RMSNorm, apply_rope, llama_hidden_dim, rope_cos_sin

# GQA：8 个 q 头共享 2 组 k、v
CFG = dict(vocab_size=61, max_seq_len=32, dim=64, n_layers=2, n_heads=8, n_kv_heads=2)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**{**CFG, **overrides})).eval()


def test_shapes_and_param_count():
    model = _model()
    x, y = torch.randint(61, (3, 32)), torch.randint(61, (3, 32))
    logits, loss = model(x, y)
    assert logits.shape == (3, 32, 61) and loss.ndim == 0
    assert abs(loss.item() - math.log(61)) < 0.1  # 初始化后接近均匀分布
    V, C, L, F, kv = 61, 64, 2, model.config.hidden_dim, 2 * 8  # kv = n_kv_heads · head_dim
    per_layer = C * C + 2 * C * kv + C * C + 3 * C * F + 2 * C
    assert model.num_params() == 2 * V * C + L * per_layer + C
    assert model.num_params(non_embedding=True) == L * per_layer + C
    tied = _model(tie_weights=True)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert tied.num_params() == V * C + L * per_layer + C
    assert not any("rope" in name for name in model.state_dict())  # cos/sin 不进检查点


def test_hidden_dim_rule():
    assert llama_hidden_dim(4096, 256) == 11008                               # Llama 2 7B
    assert llama_hidden_dim(8192, 4096, ffn_dim_multiplier=1.3) == 28672     # Llama 2 70B
    assert LlamaConfig(vocab_size=10, dim=64, multiple_of=32).hidden_dim == 192
    assert LlamaConfig(vocab_size=10, dim=64, hidden_dim=100).hidden_dim == 100


def test_bad_configs():
    with pytest.raises(ValueError, match="整除"):
        LlamaConfig(vocab_size=10, dim=66, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaConfig(vocab_size=10, dim=64, n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="偶数"):
        LlamaConfig(vocab_size=10, dim=36, n_heads=4)
    with pytest.raises(ValueError, match="正整数"):
        LlamaConfig(vocab_size=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        _model()(torch.zeros(1, 33, dtype=torch.long))


def test_is_causal():
    model = _model()
    x = torch.randint(61, (1, 20))
    y = x.clone()
    y[0, 12] = (y[0, 12] + 1) % 61
    a, b = model(x)[0], model(y)[0]
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(4, 7, 16) * 3
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    hd = 16
    cos, sin = rope_cos_sin(hd, 128, theta=10000.0)
    q, k = torch.randn(hd), torch.randn(hd)

    def score(m, n):
        return apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])

    for m, n, s in [(5, 2, 7), (10, 30, 50), (0, 0, 90), (3, 9, 100)]:
        assert math.isclose(score(m, n), score(m + s, n + s), abs_tol=1e-4)
    assert not math.isclose(score(5, 2), score(5, 3), abs_tol=1e-3)  # 距离变了，分数就变
    assert torch.allclose(apply_rope(q, cos[37], sin[37]).norm(), q.norm())  # 旋转不改变长度


@pytest.mark.parametrize("prefill", [1, 5, 17, 31])
def test_kv_cache_matches_full_recompute(prefill):
    model = _model()
    x = torch.randint(61, (2, 32))
    full, _ = model(x)
    cache = model.new_cache(batch_size=2)
    outs = [model(x[:, :prefill], cache=cache)[0]]
    for t in range(prefill, 32):  # 之后每步只送 1 个 token
        outs.append(model(x[:, t:t + 1], cache=cache)[0])
    assert cache.pos == 32
    assert (torch.cat(outs, dim=1) - full).abs().max().item() <= 1e-5


def test_kv_cache_chunked_prefill():
    model = _model()
    x = torch.randint(61, (1, 30))
    full, _ = model(x)
    cache = model.new_cache()
    parts = [model(x[:, a:b], cache=cache)[0] for a, b in [(0, 7), (7, 20), (20, 21), (21, 30)]]
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="超过"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("plen,n", [(3, 20), (10, 40), (40, 12)])  # 后两组越过 / 超出 32 的窗口
def test_cached_generation_equals_recompute(plen, n):
    model = _model()
    prompt = torch.randint(61, (1, plen))
    greedy = model.generate(prompt, n, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, n, temperature=0, use_cache=False))
    assert torch.equal(greedy, generate_tokens(model, prompt, n, temperature=0, block_size=32))
    sampled = model.generate(prompt, n, temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=5)
    reference = generate_tokens(model, prompt, n, temperature=1.0, top_k=20, top_p=0.9,
                                repetition_penalty=1.3, seed=5, block_size=32)
    assert torch.equal(sampled, reference)


def test_long_prompt_keeps_last_max_seq_len_tokens():
    model = _model()
    prompt = torch.randint(61, (50,))
    out = model.generate(prompt, 8, temperature=0)
    assert out.shape == (58,) and torch.equal(out[:50], prompt)  # 返回完整的提示 + 新 token
    tail = model.generate(prompt[-32:], 8, temperature=0)
    assert torch.equal(out[50:], tail[32:])  # 模型只看了最后 max_seq_len=32 个


def test_seeded_generation_is_reproducible():
    model = _model()
    prompt = [1, 2, 3]
    a = model.generate(prompt, 30, temperature=1.0, seed=7)
    b = model.generate(prompt, 30, temperature=1.0, seed=7)
    c = model.generate(prompt, 30, temperature=1.0, seed=8)
    assert a.shape == (33,) and torch.equal(a, b) and not torch.equal(a, c)
    batch = model.generate(torch.tensor([prompt]), 5, temperature=0)
    assert batch.shape == (1, 8)


def test_stream_yields_same_tokens_as_generate():
    model = _model()
    prompt = torch.tensor([[4, 5, 6]])
    streamed = list(model.stream(prompt, 25, temperature=0.8, top_p=0.95, seed=3))
    assert all(isinstance(t, int) for t in streamed)
    assert streamed == model.generate(prompt, 25, temperature=0.8, top_p=0.95, seed=3)[0, 3:].tolist()
    assert model.training is False
    model.train()
    list(model.stream(prompt, 3))
    assert model.training  # 生成完恢复原来的模式


def test_stop_ids_stop_generation():
    model = _model()
    prompt = [7, 8]
    free = model.generate(prompt, 20, temperature=0).tolist()
    stop = free[2 + 4]  # 贪心时第 5 个新 token
    first = free.index(stop, 2)
    out = model.generate(prompt, 20, temperature=0, stop_ids=[stop]).tolist()
    assert out == free[:first + 1]  # 停止 token 本身也包含在结果里
    assert list(model.stream(prompt, 20, temperature=0, stop_ids={stop}))[-1] == stop


def test_bad_prompts():
    model = _model()
    with pytest.raises(ValueError, match="空的"):
        model.generate([], 5)
    with pytest.raises(ValueError, match="空的"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="一次只能生成一条"):
        model.generate(torch.zeros(2, 3, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="top_p"):
        model.generate([1], 5, top_p=0.0)


def test_top_p_keeps_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    g = torch.Generator().manual_seed(0)

    def seen(top_p, n=400):
        return {sample_next(logits, 1.0, top_p=top_p, generator=g).item() for _ in range(n)}

    assert seen(0.5) == {0}          # 第一个就够 0.5 了
    assert seen(0.7) == {0, 1}       # 0.5 + 0.3 ≥ 0.7
    assert seen(0.9) == {0, 1, 2}
    assert seen(1.0) == {0, 1, 2, 3}
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            sample_next(logits, 1.0, top_p=bad)


def test_repetition_penalty_and_greedy():
    logits = torch.tensor([[2.0, 1.5, -1.0, 0.1]])
    prev = torch.tensor([[0, 2]])
    assert sample_next(logits, 0).item() == 0                                           # 贪心
    assert sample_next(logits, 0, repetition_penalty=2.0, prev_ids=prev).item() == 1     # 2.0/2 < 1.5
    assert sample_next(logits, -1.0, repetition_penalty=1.0, prev_ids=prev).item() == 0  # ≤ 0 都是贪心
    with pytest.raises(ValueError, match="repetition_penalty"):
        sample_next(logits, 1.0, repetition_penalty=0)


@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip(tmp_path, tie):
    model = _model(tie_weights=tie)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    assert isinstance(again, Llama) and again.config == model.config
    x = torch.randint(61, (2, 16))
    assert torch.equal(model(x)[0], again(x)[0])
    assert (again.lm_head.weight is again.embed_tokens.weight) == tie


def test_trainer_trains_llama():
    n, vocab = 3000, 20
    g = torch.Generator().manual_seed(0)
    data = torch.where(torch.rand(n, generator=g) < 0.8, torch.arange(n) % vocab, torch.randint(vocab, (n,), generator=g))
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=vocab, max_seq_len=16, dim=32, n_layers=1, n_heads=4, n_kv_heads=2))
    cfg = TrainConfig(max_steps=60, batch_size=8, block_size=16, lr=3e-3, eval_interval=30, eval_iters=4,
                      progress=False, log=False, device="cpu")
    history = Trainer(model, data[:2400], data[2400:], cfg).fit()
    assert history.val_loss[-1] < history.val_loss[0] - 0.5


@pytest.mark.cuda
def test_cuda_cache_and_bf16_training():
    model = _model().cuda()
    x = torch.randint(61, (2, 32), device="cuda")
    full, _ = model(x)
    cache = model.new_cache(batch_size=2)
    outs = [model(x[:, :10], cache=cache)[0]] + [model(x[:, t:t + 1], cache=cache)[0] for t in range(10, 32)]
    assert (torch.cat(outs, dim=1) - full).abs().max().item() <= 1e-3  # GPU 上可能用 TF32
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model.train()(x, x)
    loss.backward()
    assert torch.isfinite(loss)
