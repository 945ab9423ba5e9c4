
import numpy as np
import pytest
import torch

from course_lib import GPT, GPTConfig, TrainConfig, Trainer
from course_lib.train import get_batch, lr_at


def _data(n=4000, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    # 有规律的序列（每个 token 的下一个大概率是 +1），模型学得会
    base = torch.arange(n) % vocab
    noise = torch.randint(vocab, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.8
    return torch.where(keep, base, noise)


def _run(steps=60, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32))
    cfg = TrainConfig(max_steps=steps, batch_size=8, block_size=16, lr=3e-3, eval_interval=20, eval_iters=4,
                      progress=False, log=False, seed=seed, device="cpu")
    return Trainer(model, _data(), _data(seed=1), cfg).fit(), model


def test_loss_falls():
    h, _ = _run()
    assert h.val_loss[-1] < h.val_loss[0] - 0.5
    assert h.eval_step == [0, 20, 40, 60] and len(h.step_loss) == 60 and h.tokens_per_sec > 0


def test_deterministic_on_cpu():
    h1, m1 = _run(steps=20)
    h2, m2 = _run(steps=20)
    assert h1.step_loss == h2.step_loss
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_get_batch_shift_and_numpy():
    data = torch.arange(100)
    x, y = get_batch(data, 8, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and torch.equal(y, x + 1)
    xn, yn = get_batch(np.arange(100, dtype=np.uint16), 8, 4, torch.Generator().manual_seed(0))
    assert torch.equal(xn, x) and xn.dtype == torch.long


def test_block_size_longer_than_data():
    with pytest.raises(ValueError, match="block_size"):
        get_batch(torch.arange(10), 10, 2)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(ValueError, match="比 block_size=16 还短"):
        Trainer(model, torch.arange(10), None, TrainConfig(block_size=16, device="cpu"))


def test_lr_schedule():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
