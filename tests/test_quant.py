import copy

import pytest
import torch
import torch.nn as nn

from course_lib.llama import Llama, LlamaConfig
from course_lib.generate import generation_speed, stream
from course_lib.hf_adapter import HFCausalLM
from course_lib.quant import (NF4_LEVELS, NF4_PUBLISHED, SCHEMES, QuantLinear, dequantize_absmax,
                              dequantize_nf4, dequantize_zeropoint, nf4_levels, pack_int4,
                              quant_error, quantize, quantize_absmax, quantize_model, quantize_nf4,
                              quantize_zeropoint, unpack_int4, weight_memory)

CFG = dict(vocab_size=97, max_seq_len=32, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, tie_weights=True)


def _weight(rows=48, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    # 每行的尺度差 100 倍：逐通道量化应该明显好于逐张量
    return torch.randn(rows, cols, generator=g) * torch.logspace(-3, -1, rows)[:, None]


def _model(seed=0):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**CFG)).eval()


# ---------------------------------------------------------------- 单个张量的往返误差
def test_absmax_int8_round_trip_bound():
    w = _weight()
    q, s = quantize_absmax(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.dim() == 0
    assert q.abs().max() == 127                              # 绝对值最大的那个权重正好落在 ±127
    err = (dequantize_absmax(q, s) - w).abs()
    assert err.max() <= s / 2 + 1e-7                         # 四舍五入：误差不超过半个刻度
    qc, sc = quantize_absmax(w, per_channel=True)
    assert sc.shape == (48, 1)
    errc = (dequantize_absmax(qc, sc) - w).abs()
    assert (errc <= sc / 2 + 1e-7).all()
    assert (qc.abs().amax(dim=1) == 127).all()               # 每一行都用满了 -127…127
    # 行的尺度差别很大时，逐通道量化对数值小的行准得多（逐张量时它们只分到几个刻度）
    assert errc[:12].mean() < 0.1 * err[:12].mean()
    assert errc.mean() < err.mean()


def test_absmax_groupwise_and_bits():
    w = _weight()
    q, s = quantize_absmax(w, bits=4, group_size=32)
    assert s.shape == (48, 8) and q.abs().max() <= 7
    err = (dequantize_absmax(q, s) - w).abs().view(48, 8, 32)
    assert (err <= s[..., None] / 2 + 1e-7).all()


def test_zeropoint_round_trip_and_exact_zero():
    w = _weight()
    w[0, 5] = 0.0
    q, s, z = quantize_zeropoint(w, bits=8)
    assert q.dtype == torch.uint8 and z.dtype == torch.uint8 and s.shape == z.shape == (48, 1)
    w_hat = dequantize_zeropoint(q, s, z)
    assert ((w_hat - w).abs() <= s / 2 + 1e-7).all()
    assert w_hat[0, 5] == 0.0                                # 0 总能被精确表示
    # 全是正数的权重：absmax 浪费了一半的等级（负数那边），零点量化误差约小一半
    pos = w.abs()
    e_abs = quant_error(pos, dequantize_absmax(*quantize_absmax(pos, per_channel=True)))["rmse"]
    e_zp = quant_error(pos, dequantize_zeropoint(*quantize_zeropoint(pos, per_channel=True)))["rmse"]
    assert e_zp < 0.6 * e_abs


def test_int4_packing_is_exact():
    every = torch.arange(16, dtype=torch.uint8)
    pairs = torch.cartesian_prod(every, every).reshape(1, -1)    # 所有 256 种组合
    packed = pack_int4(pairs)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 256)
    assert sorted(packed.flatten().tolist()) == list(range(256))  # 一个字节的 256 个取值恰好各用一次
    assert torch.equal(unpack_int4(packed), pairs)
    assert pack_int4(torch.tensor([[3, 12]], dtype=torch.uint8)).item() == 0x3C  # 前一个在高 4 位
    q = torch.randint(0, 16, (7, 10, 64), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(q)), q)


def test_int4_group_round_trip():
    w = _weight()
    qt = quantize(w, "int4_group", group_size=64)
    assert qt.data.shape == (48, 128) and qt.scale.shape == qt.zero.shape == (48, 4)
    err = (qt.dequantize() - w).abs().view(48, 4, 64)
    assert (err <= qt.scale[..., None] / 2 + 1e-7).all()
    assert qt.bits_per_weight == pytest.approx(4 + (32 + 8) / 64)  # 4 比特 + 每组一个 float32 scale、一个 uint8 零点


# ---------------------------------------------------------------- NF4
def test_nf4_levels_are_the_published_ones():
    published = torch.tensor(NF4_PUBLISHED)
    assert len(published) == 16 and NF4_LEVELS.shape == (16,)
    assert torch.allclose(nf4_levels(), published, atol=1e-6)
    assert NF4_LEVELS[7] == 0.0 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[-1] == 1.0
    assert (NF4_LEVELS.diff() > 0).all()
    assert (NF4_LEVELS > 0).sum() == 8 and (NF4_LEVELS < 0).sum() == 7   # 不对称：正 8 个、负 7 个


def test_nf4_matches_bitsandbytes():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    assert torch.allclose(bnbf.get_4bit_type("nf4", device="cpu"), NF4_LEVELS, atol=1e-6)  # bitsandbytes 自己的表
    w = _weight(32, 128)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    qt = quantize(w, "nf4", group_size=64)
    assert torch.equal(qt.data.flatten(), packed.flatten())        # 打包后的字节逐个相同
    assert torch.allclose(qt.scale.flatten(), state.absmax)
    assert torch.allclose(qt.dequantize(), bnbf.dequantize_4bit(packed, state), atol=1e-6)


def test_nf4_round_trip():
    w = _weight()
    idx, absmax = quantize_nf4(w, block_size=64)
    assert idx.max() <= 15 and absmax.shape == (48, 4)
    w_hat = dequantize_nf4(idx, absmax)
    # 最大误差不超过相邻两个等级间距的一半（最大的间距在两端：1 - 0.7230）
    gap = NF4_LEVELS.diff().max()
    assert ((w_hat - w).abs().view(48, 4, 64) <= absmax[..., None] * gap / 2 + 1e-7).all()
    # 每块里绝对值最大的数被精确还原（它落在 ±1 上）
    blocks, blocks_hat = w.view(48, 4, 64), w_hat.view(48, 4, 64)
    i = blocks.abs().argmax(-1, keepdim=True)
    assert torch.allclose(blocks.gather(-1, i), blocks_hat.gather(-1, i))


def test_more_bits_less_error():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    errors = {s: quant_error(w, quantize(w, s).dequantize()) for s in SCHEMES}
    for s in ("int8_tensor", "int8_channel", "int8_zeropoint"):
        assert errors[s]["sqnr_db"] > 35
    for s in ("int4_group", "nf4"):
        assert 15 < errors[s]["sqnr_db"] < 30
        assert errors[s]["rmse"] > 5 * errors["int8_channel"]["rmse"]


def test_quant_error_stats():
    w = torch.tensor([1.0, -2.0, 3.0, 4.0])
    stats = quant_error(w, w + torch.tensor([0.5, 0.0, -0.5, 0.0]))
    assert stats["max_abs"] == 0.5 and stats["mean_abs"] == 0.25
    assert stats["rmse"] == pytest.approx((0.5 / 4) ** 0.5)
    assert stats["rel_error"] == pytest.approx((0.125 / 7.5) ** 0.5)
    assert quant_error(w, w)["sqnr_db"] == float("inf")


def test_all_zero_weights_are_defined():
    w = torch.zeros(4, 64)
    for s in SCHEMES:
        assert torch.equal(quantize(w, s).dequantize(), w)


# ---------------------------------------------------------------- 层与模型
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quant_linear(scheme):
    torch.manual_seed(0)
    lin = nn.Linear(128, 40, bias=True)
    ql = QuantLinear.from_linear(lin, scheme)
    x = torch.randn(3, 5, 128)
    assert torch.allclose(ql(x), x @ ql.dequantized_weight().T + lin.bias, atol=1e-5)
    rel = ((ql(x) - lin(x)).norm() / lin(x).norm()).item()
    assert rel < (0.02 if scheme.startswith("int8") else 0.15)
    state = ql.state_dict()
    expected = {"int8_tensor": torch.int8, "int8_channel": torch.int8, "int8_zeropoint": torch.uint8}
    assert state["qweight"].dtype == expected.get(scheme, torch.uint8)
    assert state["qweight"].numel() == (128 * 40 if scheme.startswith("int8") else 128 * 40 // 2)
    assert ql(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert "比特/权重" in repr(ql)


@pytest.mark.parametrize("scheme,band", [("int8_tensor", 0.03), ("int8_channel", 0.03), ("int8_zeropoint", 0.03),
                                         ("int4_group", 0.2), ("nf4", 0.2)])
def test_quantized_model_stays_close(scheme, band):
    model = _model()
    x = torch.randint(97, (2, 24))
    ref, loss = model(x, x)
    qm = quantize_model(model, scheme)
    out, qloss = qm(x, x)
    assert (out - ref).norm() / ref.norm() < band
    assert abs(qloss.item() - loss.item()) < band
    # 原模型不变；嵌入、lm_head（与嵌入共享）保持浮点
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))
    assert isinstance(qm.embed_tokens, nn.Embedding) and type(qm.lm_head) is nn.Linear
    assert qm.lm_head.weight is qm.embed_tokens.weight
    n_quant = sum(isinstance(m, QuantLinear) for m in qm.modules())
    assert n_quant == CFG["n_layers"] * 7
    # 生成照常工作（KV 缓存）
    assert len(qm.generate([1, 2, 3], 5, temperature=0)) == 8


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantized_copy_is_bitwise_equal(scheme):
    """第 08 章 8.8 节的捷径：把 QuantLinear 换回 nn.Linear、权重用反量化的结果，logits 与量化模型逐位相同
    （所以质量可以在这份副本上测，不必每次前向都反量化），贪心生成的结果也相同。"""
    model = _model()
    qm = quantize_model(model, scheme, group_size=32)
    copy_ = copy.deepcopy(model)
    for name, mod in qm.named_modules():
        if isinstance(mod, QuantLinear):
            copy_.get_submodule(name).weight.data = mod.dequantized_weight()
    x = torch.randint(97, (3, 20))
    with torch.no_grad():
        assert torch.equal(qm(x)[0], copy_(x)[0])
    assert torch.equal(qm.generate([1, 2, 3], 6, temperature=0), copy_.generate([1, 2, 3], 6, temperature=0))


def test_weight_memory():
    model = _model()
    fp32 = weight_memory(model)
    assert fp32 == 4 * model.num_params()                     # 共享的嵌入只算一次，RoPE 表不算
    linear = sum(m.weight.numel() for n, m in model.named_modules() if n.endswith("_proj"))
    int8 = weight_memory(quantize_model(model, "int8_channel"))
    rows = sum(m.weight.shape[0] for n, m in model.named_modules() if n.endswith("_proj"))
    assert int8 == fp32 - 3 * linear + 4 * rows                # int8 + 每行一个 float32 scale
    nf4 = weight_memory(quantize_model(model, "nf4"))
    assert nf4 == fp32 - 4 * linear + linear // 2 + 4 * linear // 64
    assert weight_memory(model.to(torch.bfloat16)) == fp32 // 2


def test_quantize_model_skip_and_inplace():
    model = _model()
    qm = quantize_model(model, "int8_channel", skip=("lm_head", "down_proj"))
    assert type(qm.layers[0].mlp.down_proj) is nn.Linear and isinstance(qm.layers[0].mlp.up_proj, QuantLinear)
    same = quantize_model(model, "nf4", inplace=True)
    assert same is model and isinstance(model.layers[1].self_attn.q_proj, QuantLinear)
    with pytest.raises(ValueError, match="已经量化过"):
        quantize_model(model, "nf4")


def test_generation_speed_positive():
    model = _model()
    assert generation_speed(model, [1, 2, 3], new_tokens=4, repeats=1) > 0


def test_hf_adapter_matches_course_model(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from course_lib.hf import export_hf
    model = _model()
    export_hf(model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(97, (2, 16))
    with torch.no_grad():
        ref, ref_loss = model(x[:, :-1], x[:, 1:])
        out, loss = HFCausalLM(hf)(x[:, :-1], x[:, 1:])
    assert torch.allclose(out, ref, atol=1e-4) and abs(loss.item() - ref_loss.item()) < 1e-4
    # 用 HF 的 KV 缓存贪心生成，和课程 Llama 的 generate 逐个 token 相同；遇到停止 token 就停
    ours = model.generate([5, 6, 7], 12, temperature=0)[3:].tolist()
    theirs = list(stream(HFCausalLM(hf), [5, 6, 7], 12, temperature=0))
    assert theirs == ours
    stop = ours[4]
    stopped = list(stream(HFCausalLM(hf), [5, 6, 7], 12, temperature=0, stop_ids=[stop]))
    assert stopped == ours[:ours.index(stop) + 1]
    assert generation_speed(hf, [1, 2, 3], new_tokens=3, repeats=1) > 0


# ---------------------------------------------------------------- 错误的输入
def test_group_size_must_divide_row():
    w = torch.randn(8, 100)
    for scheme in ("int4_group", "nf4"):
        with pytest.raises(ValueError, match="不能整除"):
            quantize(w, scheme, group_size=64)
    with pytest.raises(ValueError, match="不能整除"):
        quantize_absmax(w, group_size=64)
    with pytest.raises(ValueError, match="正整数"):
        quantize(w, "nf4", group_size=0)
    assert quantize(w, "nf4", group_size=50).scale.shape == (8, 2)  # 50 能整除 100：没问题
    model = Llama(LlamaConfig(**{**CFG, "dim": 96, "hidden_dim": 96 * 3}))
    with pytest.raises(ValueError, match="不能整除"):
        quantize_model(model, "int4_group", group_size=64)


def test_bad_inputs():
    w = torch.randn(4, 64)
    with pytest.raises(ValueError, match="不认识的量化方案"):
        quantize(w, "int3")
    with pytest.raises(ValueError, match="不认识的量化方案"):
        quantize_model(_model(), "fp8")
    with pytest.raises(TypeError, match="浮点"):
        quantize(w.to(torch.int8), "int8_tensor")
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize(bad, "int8_channel")
    with pytest.raises(ValueError, match="bits"):
        quantize_absmax(w, bits=16)
    with pytest.raises(ValueError, match="二维"):
        quantize_absmax(torch.randn(64), per_channel=True)
    with pytest.raises(ValueError, match="偶数"):
        pack_int4(torch.zeros(3, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0…15"):
        pack_int4(torch.tensor([[16, 0]]))
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(torch.zeros(2, dtype=torch.int8))
    with pytest.raises(ValueError, match="形状"):
        quant_error(w, w[:2])
    with pytest.raises(TypeError, match="nn.Linear"):
        QuantLinear.from_linear(nn.Embedding(3, 4), "nf4")
    q, s = quantize_absmax(torch.randn(64))                     # 一维张量逐张量量化没问题
    assert q.shape == (64,) and s.dim() == 0


@pytest.mark.cuda
def test_quant_linear_on_cuda():
    lin = nn.Linear(128, 64)
    x = torch.randn(4, 128)
    for scheme in SCHEMES:
        ql = QuantLinear.from_linear(lin, scheme)
        assert torch.allclose(ql.cuda()(x.cuda()).cpu(), QuantLinear.from_linear(lin, scheme)(x), atol=1e-4)


def test_deepcopy_and_state_dict_round_trip():
    model = _model()
    qm = quantize_model(model, "int4_group")
    clone = copy.deepcopy(qm)
    clone.load_state_dict(qm.state_dict())
    x = torch.randint(97, (1, 10))
    assert torch.equal(clone(x)[0], qm(x)[0])


def test_qlora_gradients_after_eval_on_cpu(tmp_path):
    """bitsandbytes 在 AVX512-BF16 的 CPU 上会在 eval 前向时把 4 比特权重重排成只能推理的格式（之后没有梯度）；
    disable_bnb_cpu_repacking 之后，先评测再训练，第 0 层的 LoRA 照样收到梯度。"""
    pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from course_lib.hf import export_hf
    from course_lib.quant import disable_bnb_cpu_repacking
    export_hf(_model(), tmp_path / "hf")
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", quantization_config=qc, device_map="cpu")
    disable_bnb_cpu_repacking(hf)
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in hf.modules())
    hf = peft.prepare_model_for_kbit_training(hf, use_gradient_checkpointing=False)
    model = HFCausalLM(peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                      task_type="CAUSAL_LM")))
    x = torch.randint(97, (2, 17))
    model.eval()
    with torch.no_grad():
        model(x[:, :-1])
    model.train()
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert len(grads) == 2 * CFG["n_layers"] and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_weight_memory_counts_bitsandbytes_scales(tmp_path):
    """bitsandbytes 的缩放因子不是参数：weight_memory 要把它们算上，并且第一次前向之后（int8 会把 SCB 挪到层的 state 里）不变。"""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from course_lib.hf import export_hf
    from course_lib.quant import disable_bnb_cpu_repacking
    model = _model()
    export_hf(model, tmp_path / "hf")
    fp32 = weight_memory(model)
    linear = sum(m.weight.numel() for n, m in model.named_modules() if n.endswith("_proj"))
    rows = sum(m.weight.shape[0] for n, m in model.named_modules() if n.endswith("_proj"))
    configs = {
        "int8": (BitsAndBytesConfig(load_in_8bit=True), fp32 - 3 * linear + 4 * rows),
        "nf4": (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
                weight_memory(quantize_model(model, "nf4"))),          # 与手写 NF4 字节数相同
    }
    for name, (qc, expected) in configs.items():
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", quantization_config=qc, device_map="cpu").eval()
        disable_bnb_cpu_repacking(hf)
        before = weight_memory(hf)
        with torch.no_grad():
            hf(input_ids=torch.tensor([[1, 2, 3]]))
        assert before == weight_memory(hf) == expected, name
        assert before > hf.get_memory_footprint()     # 它不数缩放因子（只多数了 RoPE 表的 128 字节）
