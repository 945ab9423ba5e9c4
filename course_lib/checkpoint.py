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


def save_model(model: torch.nn.Module, folder: str | Path, extra: dict | None = None) -> Path:
    """保存模型。共享的权重（weight tying）只存一份，加载时自动重新绑定。"""
    folder = Path(folder)
    kind = next((k for k, (cls, _) in _model_types().items() if isinstance(model, cls)), None)
    if kind is None:
        raise TypeError(f"save_model 不认识 {type(model).__name__}；支持：{', '.join(_model_types())}。")
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # 与前面某个张量共享存储（如 lm_head 与 wte）
            continue
        seen.add(t.data_ptr())
        tensors[name] = t.detach().cpu().contiguous()
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
