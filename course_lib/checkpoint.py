"""课程唯一的模型保存格式：一个文件夹，里面是 model.safetensors（权重）+ config.json（结构）。
训练检查点是同样的文件夹，多一个 trainer_state.pt（续训需要的其余一切，见本文件后半部分）。

safetensors 只存张量，加载时不会执行任何代码（不像 pickle），可以放心加载别人给的文件。
所有文件都原子写入：保存到一半断电，旧文件仍然完好。
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .checks import check_float_dtype, check_shapes
from .device import get_device
from .files import (as_path, atomic_folder, atomic_open, atomic_write_bytes, atomic_write_json, read_json,
                    read_safetensors, write_error)

WEIGHTS, CONFIG = "model.safetensors", "config.json"
SHARDS = "optimizer"          # FSDP 的检查点里：各进程的优化器状态分片（torch.distributed.checkpoint 的格式）


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
    folder = as_path(folder, "模型文件夹")
    kind = model_kind(model)
    if kind is None:
        raise TypeError(f"save_model 不认识 {type(model).__name__}；支持：{', '.join(_model_types())}。")
    check_float_dtype(dtype)
    _check_extra(extra)
    tensors = unique_state_dict(model)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    # 权重和 config.json 一起换上：写到一半出错（磁盘满），文件夹里仍是旧的那一对，不会新权重配旧 config。
    # 同一文件夹里的其他文件（例如分词器）原样保留。
    with atomic_folder(folder, keep=lambda name: name not in (WEIGHTS, CONFIG)) as tmp:
        atomic_write_bytes(tmp / WEIGHTS, st_save(tensors))
        atomic_write_json(tmp / CONFIG, {"model_type": kind, "config": model.config.to_dict(), **(extra or {})})
    return folder


def _check_extra(extra) -> None:
    """save_model 的 extra：写进 config.json 的附加信息，必须是能存成 JSON 的字典，而且不能覆盖 model_type 和 config。"""
    if extra is None:
        return
    if not isinstance(extra, dict) or {"model_type", "config"} & set(extra):
        raise ValueError(f"extra 应该是一个字典（写进 config.json 的附加信息，例如 {{\"step\": 100}}），"
                         f"而且不能有 model_type、config 这两个键，收到 {extra!r:.80}。")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise ValueError(f"extra 里有不能存成 JSON 的值（{e}）：只能用数字、字符串、列表、字典、True/False/None。"
                         "张量请先 .item() 或 .tolist()。") from None


_RESAVE = "请把同一次 save_model 保存的 config.json 和 model.safetensors 放在一起，或者重新 save_model(model, folder)。"


def _check_model_folder(folder: Path) -> None:
    """folder 不存在、是个文件、缺 config.json 或缺 model.safetensors：各给一条说清楚怎么回事的 FileNotFoundError。"""
    if not folder.exists():
        raise FileNotFoundError(f"找不到文件夹 {folder}（路径不存在），所以它不是 course_lib 保存的模型文件夹。"
                                "请检查路径是否写对；模型要先用 save_model(model, folder) 保存。")
    if not folder.is_dir():
        hint = f"请传它所在的文件夹：load_model({str(folder.parent)!r})。" if folder.name in (WEIGHTS, CONFIG) else ""
        raise FileNotFoundError(f"{folder} 是一个文件，不是文件夹，所以不是 course_lib 保存的模型文件夹"
                                f"（load_model 要的是 save_model 保存的文件夹，里面有 {CONFIG} 和 {WEIGHTS}）。{hint}")
    has_config, has_weights = (folder / CONFIG).exists(), (folder / WEIGHTS).exists()
    if has_config and not has_weights:
        return  # 先读 config.json：Hugging Face 的分片模型也只有 config.json，要提示用 import_hf（见 load_model）
    if has_weights and not has_config:
        raise FileNotFoundError(f"{folder} 里有权重 {WEIGHTS}，却缺少 {CONFIG}（模型的结构：几层、多宽、词表多大）："
                                f"没有它就不知道该建一个什么样的模型。请把保存时的 {CONFIG} 一起复制过来，或者重新 save_model(model, folder)。")
    if not has_config:
        names = sorted(p.name for p in folder.iterdir())
        if any(p.name.startswith("step_") and p.name[5:].isdigit() for p in folder.iterdir()):
            hint = ("它像是 Trainer 的 checkpoint_dir（里面是 step_XXXXXX 检查点）：请加载其中一个，"
                    "例如 load_model(latest_checkpoint(folder))（latest_checkpoint 在 course_lib.train 里）。")
        elif {"pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"} & set(names):
            hint = "它像是 Hugging Face 格式的模型文件夹，请用 course_lib.hf.import_hf(folder) 加载。"
        else:
            hint = f"文件夹里有：{', '.join(names[:8]) or '（空）'}。请检查路径；模型要先用 save_model(model, folder) 保存。"
        raise FileNotFoundError(f"{folder} 里没有 {CONFIG} 和 {WEIGHTS}，不是 course_lib 保存的模型文件夹。{hint}")


def _build_config(cfg_cls, cfg, path: Path):
    """按 config.json 里的 "config" 建 GPTConfig / LlamaConfig；字段不认识或缺了必填的，给出中文错误而不是 TypeError。"""
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} 里的 \"config\" 应该是一个对象（字段名 → 值），收到的是 {type(cfg).__name__}。{_RESAVE}")
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(cfg) - set(fields))
    missing = sorted(n for n, f in fields.items() if n not in cfg
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if unknown or missing:
        parts = ([f"有 {cfg_cls.__name__} 不认识的字段 {unknown}"] if unknown else []) + \
                ([f"缺少必填的字段 {missing}"] if missing else [])
        raise ValueError(f"{path} 的 \"config\" {'，'.join(parts)}（{cfg_cls.__name__} 的字段是：{', '.join(fields)}）。"
                         "这个文件可能被手工改过，或者是另一个版本的 course_lib 保存的。"
                         "请用保存它时的 course_lib 版本加载，或者改正这些字段后重试，或者重新 save_model。")
    return cfg_cls(**cfg)


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """加载 save_model 保存的模型。

    文件夹不存在、缺 config.json 或 model.safetensors、文件损坏、config 的字段不对、权重与结构不符，
    各有一条说清楚怎么回事、怎么办的中文错误。
    """
    folder = as_path(folder, "load_model 的模型文件夹")
    device = get_device(device) if device is not None else None  # "tpu"、没有 GPU 时的 "cuda"：一句中文错误
    _check_model_folder(folder)
    meta = read_json(folder / CONFIG, "模型配置", _RESAVE)
    if not isinstance(meta, dict) or "config" not in meta:
        raise ValueError(f"{folder} 看起来是 Hugging Face 格式的模型文件夹（config.json 里没有 course_lib 的 \"config\" 字段）。"
                         "请用 course_lib.hf.import_hf(folder) 加载。")
    if not (folder / WEIGHTS).exists():
        raise FileNotFoundError(f"{folder} 里有 {CONFIG}，却缺少权重文件 {WEIGHTS}：保存多半被中断了，或者复制时漏了这个文件。"
                                f"请把 {WEIGHTS} 一起复制过来，或者重新 save_model(model, folder)。")
    types = _model_types()
    if meta.get("model_type") not in types:
        raise ValueError(f"{folder / CONFIG} 的 model_type={meta.get('model_type')!r} 不认识；支持：{', '.join(types)}。")
    cls, cfg_cls = types[meta["model_type"]]
    model = cls(_build_config(cfg_cls, meta["config"], folder / CONFIG))
    tensors = read_safetensors(folder / WEIGHTS, "权重文件", "请重新保存（save_model）或重新下载。")
    check_shapes(model.state_dict(), tensors, f" {WEIGHTS} ", CONFIG, f"这两个文件不是同一次保存的。{_RESAVE}")
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
    folder = as_path(folder, "检查点文件夹")
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


def write_checkpoint(root: str | os.PathLike, step: int, model: torch.nn.Module, state: dict,
                     extra_dir: str | os.PathLike | None = None) -> Path:
    """把模型权重和训练状态 state 写成 root/step_XXXXXX，返回这个文件夹（只应由 rank 0 调用）。

    先写进临时文件夹，写完再改名，所以 step_XXXXXX 要么完整、要么不存在；新检查点就位后才删掉更早的。
    state 里会补上 format、version 和权重的 sha256（读取时校验）。
    extra_dir：已经写好的一个文件夹（FSDP 时各进程写的优化器分片），整个搬进检查点，名为 SHARDS。
    """
    root = Path(root)
    target = root / f"step_{step:06d}"
    tmp = root / f".tmp_{target.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:  # 只读、路径是文件、磁盘满：说清楚是哪个路径、怎么办
        raise write_error(e, root) from None
    if model_kind(model) is not None:
        save_model(model, tmp, extra={"step": step})
    else:  # 课程以外的模型（例如包了 LoRA 的 transformers 模型）：只存权重（共享的权重同样只存一份）
        atomic_write_bytes(tmp / WEIGHTS, st_save(unique_state_dict(model)))
    if extra_dir is not None:
        os.replace(extra_dir, tmp / SHARDS)
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
             "weights_sha256": hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest(), **state}
    with atomic_open(tmp / STATE_FILE) as f:  # 最后写：有 trainer_state.pt 的文件夹一定是完整的
        torch.save(state, f)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in root.iterdir():  # 新的已经就位：删掉更早的检查点和崩溃留下的临时文件夹
        if old != target and old.is_dir() and (old.name.startswith((".tmp_step_", ".tmp_shards_step_")) or
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
