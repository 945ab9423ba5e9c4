"""参考基座模型：发布的文件齐全、权重与配方一致、数字可复现；一条命令的配方能跑通（缩小版）。"""
import json
import math

import pytest
import torch

from course_lib.checkpoint import load_model, save_model
from course_lib.llama import Llama, LlamaConfig
from course_lib.cli.reference import build_reference, main
from course_lib.reference import HEAD_WINDOWS, PUBLISHED_FILES, REFERENCE_CONFIG, load_reference, reference_dir, reference_metrics
from course_lib.token_data import load_token_bin, prepare_pretraining_data
from course_lib.losses import evaluate_loss


def test_published_files_and_size():
    folder = reference_dir()
    for name in PUBLISHED_FILES:
        assert (folder / name).exists(), f"assets/base_model 缺少 {name}"
    assert (folder / "model.safetensors").stat().st_size <= 16 * 1024 * 1024
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert meta["recipe"] == json.loads(json.dumps(REFERENCE_CONFIG))  # 发布的就是配方训练出来的
    assert meta["step"] == REFERENCE_CONFIG["max_steps"]


def test_reference_loads_and_reproduces_metrics():
    model, tok = load_reference()
    m = reference_metrics()
    assert 5e6 <= model.num_params() <= 10e6 and m["params"] == model.num_params()
    assert tok.vocab_size == REFERENCE_CONFIG["vocab_size"] and tok.fingerprint == m["tokenizer_fingerprint"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    val = load_token_bin(prepare_pretraining_data(tok, corpus="mix", progress=False)["val"], tok)
    head = evaluate_loss(model, val, REFERENCE_CONFIG["block_size"], max_windows=HEAD_WINDOWS)
    assert abs(head - m["val_loss_head"]) < 1e-4
    assert math.isclose(m["val_perplexity"], math.exp(m["val_loss"]), rel_tol=1e-3)
    assert m["val_loss"] < math.log(tok.vocab_size) - 3  # 远好于均匀猜测（ln 6400 = 8.76）


def test_evaluate_loss_is_exact_mean_over_windows():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, max_seq_len=8, dim=16, n_layers=1, n_heads=2))
    data = torch.randint(0, 50, (8 * 5 + 3,))
    got = evaluate_loss(model, data, 8, batch_size=2)
    losses = [model(data[i * 8:(i + 1) * 8][None], data[i * 8 + 1:(i + 1) * 8 + 1][None])[1].item() for i in range(5)]
    assert abs(got - sum(losses) / 5) < 1e-5
    assert evaluate_loss(model, data.numpy().astype("uint16"), 8, batch_size=3) == pytest.approx(got, abs=1e-5)
    with pytest.raises(ValueError, match="不够一个"):
        evaluate_loss(model, data[:5], 8)


def test_save_model_half_precision_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, max_seq_len=8, dim=16, n_layers=1, n_heads=2, tie_weights=True))
    save_model(model, tmp_path, dtype=torch.float16)
    back = load_model(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert b.dtype == torch.float32
        assert torch.equal(a.half().float(), b), name
    assert back.lm_head.weight is back.embed_tokens.weight


def test_recipe_end_to_end_small(tmp_path, capsys):
    small = dict(corpus="news", tokenizer_chars=200_000, vocab_size=3200, block_size=32, dim=32, n_layers=1,
                 n_heads=2, n_kv_heads=1, batch_size=4, grad_accum_steps=1, max_steps=3, warmup_steps=1,
                 eval_interval=2, eval_iters=1, checkpoint_interval=2)
    out = build_reference(tmp_path / "out", tmp_path / "work", **small)
    for name in PUBLISHED_FILES:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 3 and metrics["tokens_seen"] == 3 * 4 * 32
    assert "验证集损失" in capsys.readouterr().out


def test_cli_refuses_to_overwrite_published_model_with_changed_recipe(capsys):
    assert main(["--max_steps", "3"]) == 2  # 参数错误：退出码 2，和其他命令一样
    assert "--out" in capsys.readouterr().err
    assert main(["--no_such_key", "1", "--out", "x"]) == 2
    assert "不认识的参数" in capsys.readouterr().err
