import math

import pytest
import torch

from course_lib import (GPT, BigramLM, GPTConfig, bigram_counts, bigram_nll, bigram_probs, load_model,
                        save_model)

CFG = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)


def test_bigram_counts_and_from_probs_match():
    ids = torch.tensor([1, 2, 1, 2, 3, 1, 2])
    counts = bigram_counts(ids, 4)
    assert counts[1, 2] == 3 and counts[2, 1] == 1 and counts.sum() == len(ids) - 1
    probs = bigram_probs(counts, smoothing=0.5)
    assert torch.allclose(probs.sum(1), torch.ones(4))
    model = BigramLM.from_probs(probs)
    _, loss = model(ids[:-1].unsqueeze(0), ids[1:].unsqueeze(0))
    assert math.isclose(loss.item(), bigram_nll(probs, ids), rel_tol=1e-5)


def test_bigram_initial_loss_is_ln_v():
    model = BigramLM(100)
    x = torch.randint(100, (2, 8))
    _, loss = model(x, x)
    assert math.isclose(loss.item(), math.log(100), rel_tol=1e-6)


def test_bigram_bad_smoothing():
    with pytest.raises(ValueError, match="smoothing"):
        bigram_probs(torch.zeros(3, 3), smoothing=0)


def test_gpt_shapes_and_params():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG))
    x, y = torch.randint(50, (3, 16)), torch.randint(50, (3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, 50) and loss.ndim == 0
    C, V, T, L = 32, 50, 16, 2
    assert model.num_params() == V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    assert model.lm_head.weight is model.wte.weight
    assert abs(loss.item() - math.log(50)) < 0.05  # 初始化后接近均匀分布：损失 ≈ ln V


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG)).eval()
    x = torch.randint(50, (1, 16))
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % 50  # 改变第 10 个位置
    a, _ = model(x)
    b, _ = model(y)
    assert torch.equal(a[:, :10], b[:, :10])  # 前面的位置完全不受影响
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_sdpa_and_reference_paths_agree():
    torch.manual_seed(0)
    fast = GPT(GPTConfig(**CFG))
    slow = GPT(GPTConfig(**CFG, use_sdpa=False))
    slow.load_state_dict(fast.state_dict())
    x = torch.randint(50, (2, 16))
    assert torch.allclose(fast(x)[0], slow(x)[0], atol=1e-5)


def test_bad_configs():
    with pytest.raises(ValueError, match="整除"):
        GPTConfig(vocab_size=10, n_embd=130, n_head=4)
    with pytest.raises(ValueError, match="正整数"):
        GPTConfig(vocab_size=0)
    model = GPT(GPTConfig(**CFG))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_seeded_generation_is_reproducible():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG))
    start = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(start, 40, temperature=1.0, top_k=10, seed=7)
    b = model.generate(start, 40, temperature=1.0, top_k=10, seed=7)
    c = model.generate(start, 40, temperature=1.0, top_k=10, seed=8)
    assert a.shape == (1, 41) and torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(start, 5, temperature=0)
    assert torch.equal(greedy, model.generate(start, 5, temperature=0))
    bigram = BigramLM(50)
    assert torch.equal(bigram.generate(start, 20, seed=1), bigram.generate(start, 20, seed=1))
    with pytest.raises(ValueError, match="空的"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG)).eval()
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    x = torch.randint(50, (2, 16))
    assert torch.equal(model(x)[0], again(x)[0])
    assert again.lm_head.weight is again.wte.weight
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_corrupted_or_mismatched_checkpoint(tmp_path):
    model = GPT(GPTConfig(**CFG))
    folder = save_model(model, tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="损坏"):
        load_model(folder)
    with pytest.raises(FileNotFoundError, match="不是 course_lib"):
        load_model(tmp_path / "nothing")
    other = save_model(GPT(GPTConfig(**{**CFG, "n_layer": 1})), tmp_path / "small")
    (other / "config.json").write_text((folder / "config.json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ValueError, match="结构不符"):
        load_model(other)
