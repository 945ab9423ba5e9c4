
from course_lib.exercises import check_07_lora_params, check_07_merge, check_07_model_lora_params
from course_lib.llama import LlamaConfig


def test_check_07_lora_params(capsys):
    assert check_07_lora_params(8 * (256 + 704), 256, 704, 8)
    assert not check_07_lora_params(256 * 704, 256, 704, 8)
    assert not check_07_lora_params(8 * 256, 256, 704, 8)
    out = capsys.readouterr().out
    assert "✅" in out and "❌" in out


def test_check_07_model_lora_params(capsys):
    cfg = LlamaConfig(vocab_size=6400, dim=256, n_layers=6, n_heads=8, n_kv_heads=2)
    # q_proj 256→256，v_proj 256→64（2 个 kv 头 × 32 维）
    right = 6 * 4 * ((256 + 256) + (256 + 64))
    assert check_07_model_lora_params(right, cfg, ["q_proj", "v_proj"], 4)
    assert not check_07_model_lora_params(6 * 4 * (2 * 512), cfg, ["q_proj", "v_proj"], 4)  # 忘了 GQA
    big = LlamaConfig(vocab_size=32000, max_seq_len=4096, dim=4096, n_layers=32, n_heads=32, hidden_dim=11008)
    assert check_07_model_lora_params(4_194_304, big, ["q_proj", "v_proj"], 8)  # peft 文档里 Llama-7B 的数字
    assert "差了 +4,608" in capsys.readouterr().out


def test_check_07_merge(capsys):
    assert check_07_merge(lambda W, A, B, alpha, r: W + alpha / r * B @ A)
    assert not check_07_merge(lambda W, A, B, alpha, r: W + B @ A)          # 忘了缩放
    assert not check_07_merge(lambda W, A, B, alpha, r: W + alpha / r * A.T @ B.T)  # 形状不对
    assert not check_07_merge(lambda W, A, B, alpha, r: 1 / 0)
    out = capsys.readouterr().out
    assert "✅" in out and "报错" in out
