"""课程唯一的模型保存格式：一个文件夹，里面是 model.safetensors（权重）+ config.json（结构）。
训练检查点是同样的文件夹，多一个 trainer_state.pt（续训需要的其余一切，见本文件后半部分）。

safetensors 只存张量，加载时不会执行任何代码（不像 pickle），可以放心加载别人给的文件。
所有文件都原子写入：保存到一半断电，旧文件仍然完好。
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .files import atomic_open, atomic_write_bytes, atomic_write_json, read_text_utf8

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


# ---------------------------------------------------------------- 训练检查点（Trainer 用）
# 一个检查点是 checkpoint_dir/step_XXXXXX 文件夹：上面的 model.safetensors + config.json（可以直接 load_model），
# 外加 trainer_state.pt（优化器、GradScaler、步数、取批的状态、随机数状态、History、训练设置和模型结构的「指纹」）。
STATE_FILE = "trainer_state.pt"
STATE_FORMAT, STATE_VERSION = "course_lib.trainer_state", 2


class TrainingFinishedError(ValueError):
    """要续训的检查点已经训练到 max_steps。"""


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """folder 本身是检查点就返回它；是 checkpoint_dir 就返回其中步数最大的 step_XXXXXX；都没有返回 None。"""
    folder = Path(folder)
    if (folder / STATE_FILE).exists():
        return folder
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("step_*") if p.name[5:].isdigit() and (p / STATE_FILE).exists()]
    return max(found, key=lambda p: int(p.name[5:]), default=None)


def model_fingerprint(model: torch.nn.Module) -> dict:
    """模型的「身份」：config（GPT、Llama 有）和每个张量的形状。续训时必须完全一致。"""
    config = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else None
    return {"config": config, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def describe_diff(old: dict, new: dict) -> str:
    """两个 dict 里不同的键（最多 6 个），写成「键: 检查点里是 …，现在是 …」。"""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "；".join(f"{k}: 检查点里是 {old.get(k)!r}，现在是 {new.get(k)!r}" for k in keys[:6])


def write_checkpoint(root: str | os.PathLike, step: int, model: torch.nn.Module, state: dict) -> Path:
    """把模型权重和训练状态 state 写成 root/step_XXXXXX，返回这个文件夹（只应由 rank 0 调用）。

    先写进临时文件夹，写完再改名，所以 step_XXXXXX 要么完整、要么不存在；新检查点就位后才删掉更早的。
    state 里会补上 format、version 和权重的 sha256（读取时校验）。
    """
    root = Path(root)
    target = root / f"step_{step:06d}"
    tmp = root / f".tmp_{target.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if model_kind(model) is not None:
        save_model(model, tmp, extra={"step": step})
    else:  # 课程以外的模型（例如包了 LoRA 的 transformers 模型）：只存权重（共享的权重同样只存一份）
        atomic_write_bytes(tmp / WEIGHTS, st_save(unique_state_dict(model)))
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
             "weights_sha256": hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest(), **state}
    with atomic_open(tmp / STATE_FILE) as f:  # 最后写：有 trainer_state.pt 的文件夹一定是完整的
        torch.save(state, f)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in root.iterdir():  # 新的已经就位：删掉更早的检查点和崩溃留下的临时文件夹
        if old != target and old.is_dir() and (old.name.startswith(".tmp_step_") or
                                               (old.name.startswith("step_") and old.name[5:].isdigit())):
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict, dict]:
    """读取 folder（某个 step_XXXXXX，或 checkpoint_dir 里最新的）：返回 (检查点文件夹, 训练状态, 权重张量)。

    trainer_state.pt 用 weights_only=True 读：只接受张量、数字、字符串、列表、字典，不执行任何代码；
    权重文件的 sha256 必须与状态里记录的一致。缺失、损坏、格式不对都给出中文错误。
    """
    path = latest_checkpoint(folder)
    if path is None:
        raise FileNotFoundError(f"{folder} 里没有检查点（找不到 {STATE_FILE}，也没有 step_XXXXXX 文件夹）。"
                                "请检查路径；想从头训练就不要设置 resume。")
    try:
        with open(path / STATE_FILE, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} 里没有 {STATE_FILE}，不是 Trainer 保存的检查点文件夹。") from None
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise ValueError(f"{path / STATE_FILE} 里有张量、数字、字符串、列表、字典以外的对象，为了安全不加载"
                             "（它不是 Trainer.save_checkpoint 写的）。请从 Trainer 保存的检查点续训，或从头训练。") from None
        raise ValueError(f"{path / STATE_FILE} 损坏或不完整，无法读取（{type(e).__name__}）。"
                         "请删除这个检查点文件夹，从更早的检查点续训，或从头训练。") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path / STATE_FILE} 不是第 {STATE_VERSION} 版的 Trainer 检查点。请从头训练，或换用保存它的 course_lib 版本。")
    try:
        data = (path / WEIGHTS).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"检查点 {path} 缺少权重文件 {WEIGHTS}：文件夹不完整。请从更早的检查点续训，或从头训练。") from None
    if hashlib.sha256(data).hexdigest() != state["weights_sha256"]:
        raise ValueError(f"{path / WEIGHTS} 的 sha256 与 {STATE_FILE} 里记录的不一致：权重文件损坏、被截断或被替换了。"
                         "请删除这个检查点文件夹，从更早的检查点续训，或从头训练。")
    return path, state, st_load(data)
