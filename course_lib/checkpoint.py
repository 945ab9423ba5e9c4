"""课程唯一的模型保存格式：一个文件夹，里面是 model.safetensors（权重）+ config.json（结构）。

safetensors 只存张量，加载时不会执行任何代码（不像 pickle），可以放心加载别人给的文件。
所有文件都原子写入：保存到一半断电，旧文件仍然完好。
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .files import atomic_write_bytes, atomic_write_json, read_text_utf8

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _model_types() -> dict:
    from .gpt import GPT, GPTConfig
    from .llama import Llama, LlamaConfig
    return {"gpt": (GPT, GPTConfig), "llama": (Llama, LlamaConfig)}


def model_kind(model: torch.nn.Module) -> str | None:
    """save_model 认识的模型类型（"gpt"、"llama"）；不认识时返回 None。"""
    return next((k for k, (cls, _) in _model_types().items() if isinstance(model, cls)), None)


def _unique_names(state: dict) -> list[str]:
    """state_dict 里不重复的张量名：与前面某个张量共享存储的（如与 wte 绑定的 lm_head）跳过。"""
    names, seen = [], set()
    for name, t in state.items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            names.append(name)
    return names


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """可以直接交给 safetensors 的 state_dict：共享的权重只留一份，张量搬到 CPU 并连续存储。"""
    state = model.state_dict()
    return {name: state[name].detach().cpu().contiguous() for name in _unique_names(state)}


def load_unique_state_dict(model: torch.nn.Module, tensors: dict, source: str = "权重文件") -> None:
    """把 unique_state_dict 存下的张量载入 model；被去重的共享权重随原件一起恢复。名字对不上时给出中文错误。"""
    expected = set(_unique_names(model.state_dict()))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{source} 与模型结构不符：缺少 {missing[:5]}，多出 {unexpected[:5]}。"
                         "是不是把别的模型的权重放进了这个文件夹？")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # 名字对上了，形状对不上
        raise ValueError(f"{source} 与模型结构不符（{str(e).splitlines()[-1].strip()}）。请用同样的模型配置加载。") from None


def save_model(model: torch.nn.Module, folder: str | Path, extra: dict | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """保存模型。共享的权重（weight tying）只存一份，加载时自动重新绑定。

    dtype=torch.float16 / torch.bfloat16 时把浮点权重转成半精度再存（文件小一半）；load_model 读回 float32。
    """
    folder = Path(folder)
    kind = model_kind(model)
    if kind is None:
        raise TypeError(f"save_model 不认识 {type(model).__name__}；支持：{', '.join(_model_types())}。")
    tensors = unique_state_dict(model)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    atomic_write_bytes(folder / WEIGHTS, st_save(tensors))
    atomic_write_json(folder / CONFIG, {"model_type": kind, "config": model.config.to_dict(), **(extra or {})})
    return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """加载 save_model 保存的模型；文件缺失、损坏或与结构不符时给出中文错误。"""
    folder = Path(folder)
    if not (folder / CONFIG).exists() or not (folder / WEIGHTS).exists():
        raise FileNotFoundError(f"{folder} 里没有 {CONFIG} 和 {WEIGHTS}，不是 course_lib 保存的模型文件夹。")
    meta = json.loads(read_text_utf8(folder / CONFIG))
    if "config" not in meta:
        raise ValueError(f"{folder} 看起来是 Hugging Face 格式的模型文件夹（config.json 里没有 course_lib 的 \"config\" 字段）。"
                         "请用 course_lib.hf.import_hf(folder) 加载。")
    types = _model_types()
    if meta.get("model_type") not in types:
        raise ValueError(f"{folder / CONFIG} 的 model_type={meta.get('model_type')!r} 不认识；支持：{', '.join(types)}。")
    cls, cfg_cls = types[meta["model_type"]]
    model = cls(cfg_cls(**meta["config"]))
    try:
        tensors = st_load((folder / WEIGHTS).read_bytes())
    except Exception as e:
        raise ValueError(f"{folder / WEIGHTS} 损坏或不完整，无法读取（{e}）。请重新保存或重新下载。") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {n for n in missing if n == "lm_head.weight" and model.config.tie_weights}
    if set(missing) - tied or unexpected:
        raise ValueError(f"权重与 config.json 描述的结构不符：缺少 {sorted(set(missing) - tied)[:5]}，"
                         f"多出 {sorted(unexpected)[:5]}。是不是把别的模型的权重放进了这个文件夹？")
    return model.to(device)
