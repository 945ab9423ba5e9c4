import copy
import json

import pytest
import torch
import torch.nn as nn

from course_lib import load_model, save_model
from course_lib.llama import Llama, LlamaConfig
from course_lib.lora import (ALL_TARGETS, LoRALinear, adapter_size_bytes, count_parameters, find_targets, inject_lora,
                             load_adapter, lora_modules, merge_lora, optimizer_state_bytes, save_adapter)

CFG = dict(vocab_size=97, max_seq_len=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**{**CFG, **overrides})).eval()


def _idx(seed=1, B=2, T=12):
    return torch.randint(0, CFG["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def _randomize_lora(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(0.05 * torch.randn(m.lora_B.shape, generator=g))


def test_lora_linear_starts_identical_and_matches_formula():
    torch.manual_seed(0)
    base = nn.Linear(16, 24, bias=True)
    x = torch.randn(3, 5, 16)
    ref = base(x)
    lora = LoRALinear(base, r=4, alpha=8, dropout=0.5)
    assert torch.equal(lora.lora_B, torch.zeros(24, 4)) and lora.lora_A.abs().sum() > 0
    lora.train()  # dropout 只作用在旁路上：B = 0 时训练模式下输出也与原层相同
    assert torch.equal(lora(x), ref)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert lora.lora_A.requires_grad and lora.lora_B.requires_grad
    with torch.no_grad():
        lora.lora_B.normal_()
    lora.eval()
    expected = x @ (base.weight + 2.0 * lora.lora_B @ lora.lora_A).T + base.bias  # α/r = 8/4 = 2
    assert torch.allclose(lora(x), expected, atol=1e-5)
    assert lora.delta_weight().shape == base.weight.shape


def test_inject_keeps_output_and_freezes_everything_else():
    model = _model()
    idx = _idx()
    ref, _ = model(idx)
    names = inject_lora(model, targets=["q_proj", "v_proj"], r=4, alpha=8)
    assert names == ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj",
                     "layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"]
    out, _ = model(idx)
    assert torch.equal(out, ref)  # B = 0：注入后与原模型逐位相同
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{ab}" for n in names for ab in ("lora_A", "lora_B")}
    # q_proj: 32 → 32，v_proj: 32 → 2·8 = 16；每层 r·(in + out) 个参数
    expected = 2 * 4 * ((32 + 32) + (32 + 16))
    counts = count_parameters(model)
    assert counts["trainable"] == expected
    assert counts["total"] == Llama(LlamaConfig(**CFG)).num_params() + expected
    assert counts["percent"] == pytest.approx(100 * expected / counts["total"])


def test_target_patterns():
    model = _model()
    assert len(find_targets(model, ALL_TARGETS)) == 7 * 2
    assert find_targets(model, "layers.1.mlp.*") == ["layers.1.mlp.gate_proj", "layers.1.mlp.up_proj",
                                                      "layers.1.mlp.down_proj"]
    assert "lm_head" not in find_targets(model, "*_proj")
    assert find_targets(model, "layers.0.self_attn.o_proj") == ["layers.0.self_attn.o_proj"]


def test_training_updates_only_lora_and_merge_matches():
    model = _model()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, targets=ALL_TARGETS, r=4, alpha=8, dropout=0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    idx = _idx(T=13)
    losses = []
    for _ in range(15):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    # 基座权重一个都没动
    for name, m in lora_modules(model).items():
        assert torch.equal(m.base.weight, frozen[name + ".weight"])
    assert torch.equal(model.embed_tokens.weight, frozen["embed_tokens.weight"])
    # 8 字节（exp_avg + exp_avg_sq，float32）× 可训练参数 + 每个参数张量一个 float32 的 step
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    assert optimizer_state_bytes(opt) == 8 * count_parameters(model)["trainable"] + 4 * n_tensors
    # 合并：与未合并的模型输出相同（1e-5 以内），结构变回普通 Llama
    model.eval()
    unmerged, _ = model(_idx(seed=5))
    merged = merge_lora(copy.deepcopy(model))
    assert not lora_modules(merged)
    assert set(merged.state_dict()) == set(frozen)
    out, _ = merged(_idx(seed=5))
    assert (out - unmerged).abs().max().item() < 1e-5
    assert not torch.equal(merged.layers[0].self_attn.q_proj.weight, frozen["layers.0.self_attn.q_proj.weight"])


def test_merged_model_saves_with_checkpoint(tmp_path):
    model = _model()
    inject_lora(model, targets=["q_proj", "down_proj"], r=2, alpha=4)
    _randomize_lora(model)
    expected, _ = model(_idx())
    merge_lora(model)
    save_model(model, tmp_path / "m")
    out, _ = load_model(tmp_path / "m").eval()(_idx())
    assert (out - expected).abs().max().item() < 1e-5


def test_adapter_save_load_roundtrip(tmp_path):
    model = _model()
    inject_lora(model, targets=["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=16)
    _randomize_lora(model)
    expected, _ = model(_idx())
    folder = save_adapter(model, tmp_path / "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert (cfg["r"], cfg["alpha"], len(cfg["target_modules"])) == (4, 16, 8)
    from safetensors.torch import load_file
    saved = load_file(str(folder / "adapter.safetensors"))
    assert all(k.endswith(("lora_A", "lora_B")) for k in saved) and len(saved) == 16
    n = count_parameters(model)["trainable"]
    assert n * 4 <= adapter_size_bytes(folder) < n * 4 + 4096  # 只有 A、B（float32）加一个小小的文件头
    fresh = load_adapter(_model(), folder)  # 同一个基座（同样的种子），自动注入再载入
    out, _ = fresh(_idx())
    assert torch.equal(out, expected)
    # 已经注入过同样结构的 LoRA 时直接载入
    other = _model()
    inject_lora(other, targets=["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=16)
    assert torch.equal(load_adapter(other, folder)(_idx())[0], expected)


def test_train_modules_are_saved_in_adapter(tmp_path):
    model = _model()
    inject_lora(model, targets="q_proj", r=2, alpha=4, train_modules=["embed_tokens"])
    assert model.embed_tokens.weight.requires_grad
    assert count_parameters(model)["trainable"] == CFG["vocab_size"] * CFG["dim"] + 2 * 2 * (32 + 32)
    with torch.no_grad():
        model.embed_tokens.weight[5] += 1.0
    _randomize_lora(model)
    expected, _ = model(_idx())
    folder = save_adapter(model, tmp_path / "a")
    assert json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["train_modules"] == ["embed_tokens"]
    out, _ = load_adapter(_model(), folder)(_idx())
    assert torch.equal(out, expected)


@pytest.mark.parametrize("r", [0, -2, 2.5, True])
def test_bad_rank_gives_chinese_error(r):
    with pytest.raises(ValueError, match="秩 r 必须是正整数"):
        inject_lora(_model(), targets="q_proj", r=r)
    with pytest.raises(ValueError, match="秩 r"):
        LoRALinear(nn.Linear(4, 4), r=r)


def test_bad_alpha_and_dropout():
    with pytest.raises(ValueError, match="alpha 必须是正数"):
        LoRALinear(nn.Linear(4, 4), r=2, alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(nn.Linear(4, 4), r=2, dropout=1.0)


def test_unknown_target_gives_chinese_error():
    model = _model()
    with pytest.raises(ValueError, match="'q_porj' 没有匹配到任何线性层.*q_proj"):
        inject_lora(model, targets=["q_porj", "v_proj"])
    assert not lora_modules(model)  # 出错时什么都没改
    with pytest.raises(ValueError, match="没有匹配到任何线性层"):
        inject_lora(model, targets="self_attn")  # 匹配到的是注意力模块本身，不是线性层
    inject_lora(model, targets="q_proj")
    with pytest.raises(ValueError, match="已经装过 LoRA"):
        inject_lora(model, targets="q_proj")
    with pytest.raises(ValueError, match="train_modules"):
        inject_lora(_model(), targets="q_proj", train_modules=["embeddings"])


def test_tied_lm_head_is_refused():
    with pytest.raises(ValueError, match="共享.*train_modules"):
        inject_lora(_model(tie_weights=True), targets=["lm_head"])
    untied = _model()
    assert inject_lora(untied, targets=["lm_head"]) == ["lm_head"]


def test_adapter_on_other_shape_gives_chinese_error(tmp_path):
    model = _model()
    inject_lora(model, targets=["q_proj", "v_proj"], r=4)
    folder = save_adapter(model, tmp_path / "a")
    with pytest.raises(ValueError, match="形状不符.*同一个基座"):
        load_adapter(_model(dim=64), folder)
    with pytest.raises(ValueError, match="没有这个线性层"):
        load_adapter(_model(n_layers=1), folder)
    other_r = _model()
    inject_lora(other_r, targets=["q_proj", "v_proj"], r=8)
    with pytest.raises(ValueError, match="形状不符"):
        load_adapter(other_r, folder)
    with pytest.raises(FileNotFoundError, match="不是 save_adapter 保存的适配器"):
        load_adapter(_model(), tmp_path / "nothing")


def test_merge_without_lora_errors():
    with pytest.raises(ValueError, match="没有 LoRALinear"):
        merge_lora(_model())


# ---------------------------------------------------------------- peft / transformers 互通
def _peft_model(tmp_path, base, **lora_kwargs):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from course_lib.hf import export_hf
    folder = export_hf(base, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cfg = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"],
                             "lora_dropout": 0.0, **lora_kwargs})
    pm = peft.get_peft_model(hf, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return pm


def test_peft_adapter_loads_into_course_llama(tmp_path):
    from course_lib.hf_adapter import HFCausalLM
    from course_lib.lora import load_peft_adapter
    base = _model()
    pm = _peft_model(tmp_path, base)
    pm.save_pretrained(tmp_path / "adapter")
    ours = load_peft_adapter(_model(), tmp_path / "adapter")
    assert sorted(lora_modules(ours)) == sorted(f"layers.{i}.{m}" for i in range(2)
                                                for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    idx = _idx()
    theirs, _ = HFCausalLM(pm)(idx)
    mine, _ = ours(idx)
    assert (theirs - mine).abs().max().item() < 1e-5
    # 同样的 (x, y)、同样忽略 -100：HFCausalLM 的损失与 course_lib.Llama 的损失相同
    y = idx.clone()
    y[:, :5] = -100
    assert abs(HFCausalLM(pm)(idx, y)[1].item() - ours(idx, y)[1].item()) < 1e-5
    # peft 的 merge_and_unload 与我们的 merge_lora 得到同样的权重
    merged_hf = pm.merge_and_unload()
    merged = merge_lora(ours)
    assert torch.allclose(merged_hf.model.layers[1].mlp.down_proj.weight, merged.layers[1].mlp.down_proj.weight,
                          atol=1e-6)


def test_rslora_scales_by_sqrt_r_and_matches_peft(tmp_path):
    from course_lib.hf_adapter import HFCausalLM
    from course_lib.lora import LoRALinear, load_peft_adapter
    lin = torch.nn.Linear(8, 8)
    assert LoRALinear(lin, r=4, alpha=8).scaling == 2.0                     # 原始 LoRA：α / r
    assert LoRALinear(torch.nn.Linear(8, 8), r=4, alpha=8, rslora=True).scaling == 4.0   # rsLoRA：α / √r
    pm = _peft_model(tmp_path, _model(), use_rslora=True)
    pm.save_pretrained(tmp_path / "rs")
    ours = load_peft_adapter(_model(), tmp_path / "rs")
    assert all(m.rslora and m.scaling == 4.0 for m in lora_modules(ours).values())
    idx = _idx()
    assert (HFCausalLM(pm)(idx)[0] - ours(idx)[0]).abs().max().item() < 1e-5
    # 自己的格式存下来再读回：rslora 也跟着回来
    save_adapter(ours, tmp_path / "mine")
    back = load_adapter(_model(), tmp_path / "mine")
    assert all(m.rslora for m in lora_modules(back).values())


def test_peft_adapter_errors(tmp_path):
    from course_lib.lora import load_peft_adapter
    pm = _peft_model(tmp_path, _model(), use_dora=True)
    pm.save_pretrained(tmp_path / "dora")
    with pytest.raises(ValueError, match="use_dora"):
        load_peft_adapter(_model(), tmp_path / "dora")
    pm = _peft_model(tmp_path, _model())
    pm.save_pretrained(tmp_path / "ok")
    with pytest.raises(ValueError, match="形状不符"):
        load_peft_adapter(_model(dim=64), tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="peft"):
        load_peft_adapter(_model(), tmp_path)


def test_course_adapter_copies_into_peft(tmp_path):
    from peft import set_peft_model_state_dict

    from course_lib.hf_adapter import HFCausalLM
    from course_lib.lora import adapter_state_dict, to_peft_state_dict
    base = _model()
    pm = _peft_model(tmp_path, base)
    ours = copy.deepcopy(base)
    inject_lora(ours, targets=["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    _randomize_lora(ours, seed=11)
    result = set_peft_model_state_dict(pm, to_peft_state_dict(adapter_state_dict(ours)))
    assert not result.unexpected_keys
    idx = _idx()
    assert (HFCausalLM(pm)(idx)[0] - ours(idx)[0]).abs().max().item() < 1e-5


def test_check_07_scaling(capsys):
    from course_lib.exercises import check_07_scaling
    assert check_07_scaling(lambda alpha, r, rslora: alpha / (r ** 0.5 if rslora else r))
    assert not check_07_scaling(lambda alpha, r, rslora: alpha / r)                 # 忘了 rsLoRA
    assert not check_07_scaling(lambda alpha, r, rslora: alpha / r ** 0.5)          # 原始 LoRA 也用了 √r
    assert not check_07_scaling(lambda alpha, r, rslora: 1 / 0)
    out = capsys.readouterr().out
    assert "✅" in out and "√r" in out and "报错" in out
