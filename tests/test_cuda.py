"""只在有 NVIDIA GPU 的机器上运行（CI 上自动跳过）。"""
import pytest
import torch

from course_lib import GPT, GPTConfig, TrainConfig, Trainer, autocast_dtype

pytestmark = pytest.mark.cuda


def test_autocast_dtype_on_cuda():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype("cuda") == expected


def test_training_on_cuda_loss_falls():
    torch.manual_seed(0)
    data = torch.arange(5000) % 30
    model = GPT(GPTConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=64))
    cfg = TrainConfig(max_steps=80, batch_size=16, block_size=32, lr=3e-3, eval_interval=40, eval_iters=4,
                      progress=False, log=False, device="cuda")
    h = Trainer(model, data, data, cfg).fit()
    assert h.val_loss[-1] < h.val_loss[0] - 1.0
    assert next(model.parameters()).is_cuda


def test_sdpa_matches_reference_on_cuda():
    torch.manual_seed(0)
    fast = GPT(GPTConfig(vocab_size=40, block_size=64, n_layer=2, n_head=4, n_embd=64)).cuda().eval()
    slow = GPT(GPTConfig(vocab_size=40, block_size=64, n_layer=2, n_head=4, n_embd=64, use_sdpa=False)).cuda().eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randint(40, (2, 64), device="cuda")
    assert torch.allclose(fast(x)[0], slow(x)[0], atol=1e-4)
