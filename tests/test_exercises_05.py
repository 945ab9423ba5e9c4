"""第 05 章练习的检查函数：答对时返回 True，答错时返回 False，并各打印一行中文结论。"""
import dataclasses
import math

import pytest
import torch

from course_lib import Llama, LlamaConfig, TrainConfig, chapter_config
from course_lib.exercises import (check_05_lr_at, check_05_tokens_per_step, check_05_train_flops,
                                  check_05_train_hours)
from course_lib.profiles import CHAPTERS, PROFILES
from course_lib.flops import flops_per_token, peak_flops
from course_lib.train import lr_at

FULL = chapter_config("05_pretraining", "full")


def test_profile_keys_identical_and_usable():
    keys = [set(CHAPTERS["05_pretraining"][p]) for p in PROFILES]
    assert keys[0] == keys[1] == keys[2], "05_pretraining 三档配置的键不一致"
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for p in PROFILES:  # pretrain() 就是这样从配置里取出 TrainConfig 的
        cfg = chapter_config("05_pretraining", p)
        TrainConfig(**{k: v for k, v in cfg.items() if k in fields}, checkpoint_dir="x")
        for key in ("corpus", "tokenizer_chars", "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "seed"):
            assert key in cfg


def test_tokens_per_step(capsys):
    right = FULL["batch_size"] * FULL["grad_accum_steps"] * 16 * FULL["block_size"]
    assert check_05_tokens_per_step(right, FULL, world_size=16)
    assert not check_05_tokens_per_step(right // 16, FULL, world_size=16)  # 忘了乘进程数
    assert not check_05_tokens_per_step("很多", FULL)
    out = capsys.readouterr().out
    assert "✅" in out and "❌" in out


def test_lr_at_by_hand():
    cfg = TrainConfig(max_steps=FULL["max_steps"], lr=FULL["lr"], min_lr_ratio=FULL["min_lr_ratio"],
                      warmup_steps=FULL["warmup_steps"])
    # 预热阶段
    assert check_05_lr_at(FULL["lr"] * 11 / FULL["warmup_steps"], 10, FULL)
    assert not check_05_lr_at(FULL["lr"] * 10 / FULL["warmup_steps"], 10, FULL)  # 少了 +1
    # 余弦阶段：按公式手算
    w, T, lr = FULL["warmup_steps"], FULL["max_steps"], FULL["lr"]
    lo = lr * FULL["min_lr_ratio"]
    by_hand = lo + 0.5 * (1 + math.cos(math.pi * (1000 - w) / (T - w))) * (lr - lo)
    assert math.isclose(by_hand, lr_at(1000, cfg))
    assert check_05_lr_at(by_hand, 1000, FULL)
    assert not check_05_lr_at(lr, 1000, FULL)


def test_train_flops_and_hours():
    m = Llama(LlamaConfig(vocab_size=FULL["vocab_size"], max_seq_len=FULL["block_size"], dim=FULL["dim"],
                          n_layers=FULL["n_layers"], n_heads=FULL["n_heads"], n_kv_heads=FULL["n_kv_heads"],
                          tie_weights=FULL["tie_weights"]))
    tokens = FULL["batch_size"] * FULL["grad_accum_steps"] * FULL["block_size"] * FULL["max_steps"]
    flops = flops_per_token(m, FULL["block_size"]) * tokens
    assert check_05_train_flops(flops, FULL)
    assert check_05_train_flops(flops * 1.01, FULL)   # 估算：1% 以内都算对
    assert not check_05_train_flops(6 * m.num_params() * tokens / 3, FULL)
    assert not check_05_train_flops(None, FULL)
    hours = flops / (peak_flops("H100") * 8 * 0.4) / 3600
    assert check_05_train_hours(hours, FULL, gpu="H100", n_gpus=8, mfu=0.4)
    assert not check_05_train_hours(hours * 8, FULL, gpu="H100", n_gpus=8, mfu=0.4)
    with pytest.raises(ValueError, match="PEAK_FLOPS"):
        check_05_train_hours(hours, FULL, gpu="TPU v5")


def test_checker_model_matches_real_model():
    """检查函数在 meta 设备上建模型；它的 FLOPs 应该与真实的模型完全相同。"""
    tiny = chapter_config("05_pretraining", "tiny")
    torch.manual_seed(0)
    real = Llama(LlamaConfig(vocab_size=tiny["vocab_size"], max_seq_len=tiny["block_size"], dim=tiny["dim"],
                             n_layers=tiny["n_layers"], n_heads=tiny["n_heads"], n_kv_heads=tiny["n_kv_heads"],
                             tie_weights=tiny["tie_weights"]))
    tokens = tiny["batch_size"] * tiny["grad_accum_steps"] * tiny["block_size"] * tiny["max_steps"]
    assert check_05_train_flops(flops_per_token(real, tiny["block_size"]) * tokens, tiny)
