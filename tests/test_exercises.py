import math

import torch

from course_lib import GPTConfig
from course_lib.attention import attention_reference
from course_lib.exercises import (check_01_best_smoothing, check_01_uniform_nll, check_02_attention_params,
                                  check_02_bidirectional, check_03_gpt_params)


def test_checkers_accept_right_and_reject_wrong(capsys):
    assert check_01_uniform_nll(math.log(3000), 3000) and not check_01_uniform_nll(3000, 3000)
    ids = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 0, 1])
    assert check_01_best_smoothing(0.001, ids, ids, 4) and not check_01_best_smoothing(1.0, ids, ids, 4)
    assert check_02_attention_params(4 * 64 * 64 + 4 * 64, 64) and not check_02_attention_params(3 * 64 * 64, 64)
    assert check_02_bidirectional(lambda q, k, v: attention_reference(q, k, v, causal=False))
    assert not check_02_bidirectional(lambda q, k, v: attention_reference(q, k, v, causal=True))
    assert not check_02_bidirectional(lambda q, k, v: 1 / 0)
    cfg = GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=16)
    C = 16
    assert check_03_gpt_params(100 * C + 32 * C + 2 * (12 * C * C + 13 * C) + 2 * C, cfg)
    assert not check_03_gpt_params(1, cfg)
    out = capsys.readouterr().out
    assert "✅" in out and "❌" in out
