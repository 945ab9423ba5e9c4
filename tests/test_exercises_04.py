import torch
import torch.nn.functional as F

from course_lib.exercises import check_04_hidden_dim, check_04_kv_cache_bytes, check_04_rmsnorm


def _rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_check_04_rmsnorm_accepts_rmsnorm_and_rejects_layernorm(capsys):
    assert check_04_rmsnorm(_rms_norm)
    assert not check_04_rmsnorm(lambda x, w, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, eps=eps))
    assert not check_04_rmsnorm(lambda x, w, eps=1e-5: x / x.pow(2).mean(-1, keepdim=True).sqrt())  # 忘了乘 weight
    assert not check_04_rmsnorm(lambda x, w, eps=1e-5: 1 / 0)
    out = capsys.readouterr().out
    assert "✅" in out and "ZeroDivisionError" in out


def test_check_04_hidden_dim(capsys):
    assert check_04_hidden_dim(11008)                                            # Llama-2-7B
    assert check_04_hidden_dim(10944, dim=4096, multiple_of=32)
    assert check_04_hidden_dim(28672, dim=8192, multiple_of=4096, ffn_dim_multiplier=1.3)  # Llama-2-70B
    assert not check_04_hidden_dim(10922)                                        # 忘了向上取整
    assert "向上取整" in capsys.readouterr().out
    assert not check_04_hidden_dim(16384)                                        # 4·dim
    assert "三个矩阵" in capsys.readouterr().out


def test_check_04_kv_cache_bytes(capsys):
    args = dict(n_layers=32, n_kv_heads=32, head_dim=128, seq_len=4096)          # Llama-2-7B，fp16
    assert check_04_kv_cache_bytes(2 * 2**30, **args)
    assert check_04_kv_cache_bytes(4 * 2**30, n_layers=32, n_kv_heads=8, head_dim=128, seq_len=8192, batch_size=4)
    assert not check_04_kv_cache_bytes(2**30, **args)
    assert "k 和 v" in capsys.readouterr().out
    assert not check_04_kv_cache_bytes(2**30, **{**args, "bytes_per_value": 4})   # 只数了个数，没乘 4 字节
    assert "字节数" in capsys.readouterr().out
    assert not check_04_kv_cache_bytes(3, **args)
