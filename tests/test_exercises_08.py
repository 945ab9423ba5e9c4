import torch

from course_lib.exercises import check_08_double_quant_bits, check_08_int4_absmax


def _fake_int4(w, group_size):
    g = w.reshape(w.shape[0], -1, group_size)
    s = g.abs().amax(-1, keepdim=True) / 7
    return (torch.round(g / s).clamp(-7, 7) * s).reshape(w.shape)


def test_check_08_double_quant_bits(capsys):
    assert check_08_double_quant_bits(4 + 8 / 64 + 32 / (64 * 256))
    assert not check_08_double_quant_bits(4.5)
    assert "不做双重量化" in capsys.readouterr().out
    assert check_08_double_quant_bits(4 + 8 / 128 + 32 / (128 * 256), block_size=128)


def test_check_08_int4_absmax(capsys):
    assert check_08_int4_absmax(_fake_int4)
    assert not check_08_int4_absmax(lambda w, g: w)                                  # 没量化
    assert not check_08_int4_absmax(lambda w, g: _fake_int4(w, w.shape[1]))          # 逐行而不是逐组
    assert not check_08_int4_absmax(lambda w, g: 1 / 0)
    out = capsys.readouterr().out
    assert "✅" in out and "❌" in out and "ZeroDivisionError" in out
