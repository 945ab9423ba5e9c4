"""第 07 章：低秩适配（LoRA，Low-Rank Adaptation），手写版。

全量微调（full fine-tuning）要更新每一个权重 W (out, in)。LoRA 冻结 W，只学一个低秩的增量：

    y = x Wᵀ + (α / r) · dropout(x) Aᵀ Bᵀ        A: (r, in)，B: (out, r)，r ≪ min(in, out)

- A 随机初始化、B 初始化为 0：刚装上 LoRA 时 ΔW = B·A = 0，模型的输出与原模型完全一样，训练从原模型出发；
- α / r 是缩放（scaling）。LoRA 论文的做法是固定 α（取第一次试的 r）、不再调它；换秩时 α 不变，缩放 α / r 就随 r
  变小——r 越大，同样的学习率下增量学得越慢，大 r 的好处因此显不出来。rsLoRA（Kalajdzievski 2023，「秩稳定」的缩放）
  改用 α / √r，证明这样换秩时学习才稳定：inject_lora(..., rslora=True)，与 peft 的 use_rslora=True 是同一个公式；
- 训练完可以把 ΔW 合并（merge）回 W：W' = W + (α / r)·B·A，推理时和原模型一样快、一样大，没有额外的层；
- 适配器（adapter）只有 A、B 两组小矩阵，单独保存只占原模型的百分之几。

用法（model 是 course_lib.llama.Llama，子模块名与 Hugging Face 相同：q_proj、k_proj、v_proj、o_proj、
gate_proj、up_proj、down_proj）：

    inject_lora(model, targets=["q_proj", "v_proj"], r=8, alpha=16)   # 包装选中的线性层，冻结其余参数
    count_parameters(model)                                            # 可训练参数 / 全部参数
    ... 训练（只有 LoRA 的 A、B 会更新）...
    save_adapter(model, "runs/lora")                                   # 只存 A、B（safetensors）
    merge_lora(model)                                                  # 合并回 W，变回普通的 Llama

与 peft 互通：load_peft_adapter 把 peft 保存的 LoRA 适配器装到 course_lib 的 Llama 上；to_peft_state_dict 反过来
把我们的 A、B 改成 peft 的张量名；course_lib.hf_adapter.HFCausalLM 把 transformers 模型包成 model(idx, targets) → (logits, loss)，
这样 sft.train_sft / sft.evaluate_sft 也能训练、评测 peft 模型。

目标名的写法（targets）：每一项按模块的完整名字匹配，可以只写最后一段（"q_proj" 匹配所有层的
q_proj），也可以用通配符（"layers.0.*"、"mlp.*"、"*_proj"）。一项都没匹配上时报中文错误。
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save as st_save

from .checks import check_module
from .files import as_path, atomic_folder, atomic_write_bytes, atomic_write_json, read_json, read_safetensors

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"


def _check_hparams(r, alpha, dropout) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA 的秩 r 必须是正整数，收到 {r!r}。r 是低秩矩阵 A (r, in)、B (out, r) 的中间维度，"
                         "常用 4、8、16、32；r ≤ 0 没有意义。")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ValueError(f"LoRA 的 alpha 必须是正数，收到 {alpha!r}。增量的缩放是 alpha / r，常取 alpha = 2r。")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA 的 dropout 必须在 [0, 1) 之间，收到 {dropout!r}。")


class LoRALinear(nn.Module):
    """把一个 nn.Linear 包起来：原权重冻结，旁路加上可训练的 (α/r)·B·A。

    base：被包装的线性层（它的参数会被设成 requires_grad=False）。
    lora_A (r, in)：和 nn.Linear 一样的 Kaiming 均匀初始化；lora_B (out, r)：全 0。
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear 只能包装 nn.Linear，收到 {type(base).__name__}。")
        _check_hparams(r, alpha, dropout)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.rslora = r, alpha, bool(rslora)
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r   # rsLoRA：α / √r；原始 LoRA：α / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r)·B·A，形状 (out, in)，与 base.weight 相同。"""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 先乘 A（降到 r 维）再乘 B：每个 token 只多 r·(in + out) 次乘加，从不显式构造 (out, in) 的 ΔW
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling  # (..., out)

    def merged_linear(self) -> nn.Linear:
        """返回一个新的 nn.Linear，权重是 W + ΔW（偏置照抄）。"""
        b = self.base
        out = nn.Linear(b.in_features, b.out_features, bias=b.bias is not None,
                        device=b.weight.device, dtype=b.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(b.weight + self.delta_weight().to(b.weight.dtype))
            if b.bias is not None:
                out.bias.copy_(b.bias)
        return out

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}" + (", rslora" if self.rslora else "")


# ---------------------------------------------------------------- 选中、注入、冻结
def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _matches(name: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern) or fnmatchcase(name, "*." + pattern)


def _normalize_targets(targets) -> list[str]:
    names = [targets] if isinstance(targets, str) else list(targets) if hasattr(targets, "__iter__") else []
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ValueError(f"targets 应该是非空的模块名列表，例如 ['q_proj', 'v_proj']，收到 {targets!r}。")
    return names


def find_targets(model: nn.Module, targets: str | Iterable[str] = ATTENTION_TARGETS) -> list[str]:
    """按名字选出要包装的 nn.Linear，返回它们的完整名字（按模型里的顺序）。

    每个模式至少要匹配一个线性层，否则报错并列出可选的名字——拼错一个字母时 LoRA 会悄悄少装一层，
    训练效果变差却不报错，这是很常见的坑。
    """
    check_module(model, "LoRA")
    targets = _normalize_targets(targets)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linears if any(_matches(n, t) for t in targets)]
    for t in targets:
        if not any(_matches(n, t) for n in linears):
            short = sorted({n.rsplit(".", 1)[-1] for n in linears})
            already = [n for n, m in model.named_modules() if isinstance(m, LoRALinear) and _matches(n, t)]
            hint = "（这些层已经装过 LoRA 了，不能重复注入）" if already else ""
            raise ValueError(f"LoRA 的目标 {t!r} 没有匹配到任何线性层{hint}。可以用的名字有：{', '.join(short)}；"
                             "也可以写完整路径或通配符，例如 'layers.0.self_attn.q_proj'、'mlp.*'。")
    return chosen


def _shared_weight(model: nn.Module, name: str) -> str | None:
    """name 这个线性层的权重若与别的参数共享（例如与词嵌入绑定的 lm_head），返回那个参数的名字。"""
    weight = model.get_submodule(name).weight
    for pname, p in model.named_parameters(remove_duplicate=False):
        if p is weight and not pname.startswith(name + "."):
            return pname
    return None


def inject_lora(model: nn.Module, targets: str | Iterable[str] = ATTENTION_TARGETS, r: int = 8, alpha: float = 16,
                dropout: float = 0.0, train_modules: Iterable[str] = (), rslora: bool = False) -> list[str]:
    """把 model 里名字匹配 targets 的 nn.Linear 原地换成 LoRALinear，并冻结其余所有参数。

    train_modules：另外要整体训练（不用 LoRA）的模块名，写法同 targets，例如 ["embed_tokens"]。
    扩充了词表（新加了 token）时，新 token 的嵌入从零学起，低秩增量学不好，要整体训练它们——
    这就是 peft 的 modules_to_save。rslora=True：缩放用 α / √r（rsLoRA）而不是 α / r。返回被包装的模块名。
    """
    _check_hparams(r, alpha, dropout)
    names = find_targets(model, targets)
    for name in names:
        shared = _shared_weight(model, name)
        if shared is not None:
            raise ValueError(f"{name} 的权重与 {shared} 共享（weight tying）。给它装 LoRA 再合并，会连 {shared} 一起改掉，"
                             "合并前后的模型就不一样了。请把它放进 train_modules 整体训练，或从 targets 里去掉。")
    for name in names:
        _set_submodule(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, rslora))
    mark_only_lora_trainable(model, train_modules)
    return names


def mark_only_lora_trainable(model: nn.Module, train_modules: Iterable[str] = ()) -> None:
    """只让 LoRA 的 A、B（以及 train_modules 里模块的全部参数）可训练，其余参数全部冻结。"""
    train_modules = [train_modules] if isinstance(train_modules, str) else list(train_modules)
    modules = dict(model.named_modules())
    full = [n for n in modules if n and any(_matches(n, t) for t in train_modules)]
    for t in train_modules:
        if not any(_matches(n, t) for n in full):
            raise ValueError(f"train_modules 里的 {t!r} 没有匹配到任何模块。"
                             f"顶层模块有：{', '.join(n for n in modules if n and '.' not in n)}。")
    for pname, p in model.named_parameters():
        p.requires_grad_(pname.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    for n in full:
        for p in modules[n].parameters():
            p.requires_grad_(True)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def count_parameters(model: nn.Module) -> dict:
    """{"trainable": 可训练参数个数, "total": 全部参数个数（共享的只算一次）, "percent": 百分比}。"""
    params = list(model.parameters())  # parameters() 本身就会去掉重复（共享）的参数
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """优化器状态实际占用的字节数（AdamW：每个可训练参数一份一阶矩 exp_avg、一份二阶矩 exp_avg_sq）。

    要在至少 optimizer.step() 一次之后调用：PyTorch 在第一步才创建这些状态。
    """
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


# ---------------------------------------------------------------- 合并
@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """把每个 LoRALinear 换回普通 nn.Linear（权重 W + ΔW），原地修改并返回 model。

    合并后模型结构与原模型完全相同（可以用 save_model 保存、export_hf 导出），推理没有额外开销；
    输出与合并前相同（只差浮点舍入，约 1e-6）。合并后所有参数恢复 requires_grad=True。
    """
    check_module(model, "merge_lora")
    mods = lora_modules(model)
    if not mods:
        raise ValueError("模型里没有 LoRALinear，没有可以合并的东西。先用 inject_lora 或 load_adapter 装上 LoRA。")
    for name, m in mods.items():
        _set_submodule(model, name, m.merged_linear())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ---------------------------------------------------------------- 只保存适配器
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """适配器的全部张量：LoRA 的 A、B，以及其他可训练（train_modules）的参数。名字与 model 的参数名相同。"""
    mods = lora_modules(model)
    if not mods:
        raise ValueError("模型里没有 LoRALinear：先用 inject_lora 装上 LoRA，再保存适配器。")
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad or name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
            out[name] = p.detach().cpu().contiguous()
    return out


def _adapter_config(model: nn.Module, tensors: dict) -> dict:
    mods = lora_modules(model)
    (r, alpha, rslora), = {(m.r, m.alpha, m.rslora) for m in mods.values()} or {(None, None, False)}  # 只用一组
    return {"r": r, "alpha": alpha, "rslora": rslora, "target_modules": sorted(mods),
            "base_shapes": {n: list(m.base.weight.shape) for n, m in mods.items()},
            "train_modules": sorted({n.rsplit(".", 1)[0] for n in tensors if not n.endswith(("lora_A", "lora_B"))}),
            "format": "course_lib.lora"}


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """只保存适配器：folder/adapter.safetensors（A、B 等张量）+ folder/adapter_config.json。返回 folder。

    基座模型的权重一个也不存：别人手里有同一个基座，加载这个小文件就能复原微调后的模型。
    """
    folder = as_path(folder, "适配器文件夹")
    tensors = adapter_state_dict(model)
    if len({(m.r, m.alpha, m.rslora) for m in lora_modules(model).values()}) != 1:
        raise ValueError("模型里的 LoRA 层用了不同的 r 或 alpha，save_adapter 只支持一组 r、alpha。")
    # 两个文件一起换上：写到一半出错（磁盘满），文件夹里仍是旧的那一对，不会新权重配旧 config
    with atomic_folder(folder, keep=lambda name: name not in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)) as tmp:
        atomic_write_bytes(tmp / ADAPTER_WEIGHTS, st_save(tensors, metadata={"format": "course_lib.lora"}))
        atomic_write_json(tmp / ADAPTER_CONFIG, _adapter_config(model, tensors))
    return folder


def adapter_size_bytes(folder: str | Path) -> int:
    """适配器文件（adapter.safetensors）的字节数。"""
    return (Path(folder) / ADAPTER_WEIGHTS).stat().st_size


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """把 save_adapter 保存的适配器装到 model 上（原地修改并返回 model）。

    model 还没有 LoRA 时，按 adapter_config.json 里的目标、r、alpha 自动注入；已经注入时，结构必须一致。
    基座的形状与训练适配器时不同（例如换了 dim 或层数）时，给出中文错误而不是乱装。
    """
    check_module(model, "load_adapter")
    folder = as_path(folder, "适配器文件夹")
    if not (folder / ADAPTER_CONFIG).exists() or not (folder / ADAPTER_WEIGHTS).exists():
        raise FileNotFoundError(f"{folder} 里没有 {ADAPTER_CONFIG} 和 {ADAPTER_WEIGHTS}，不是 save_adapter 保存的适配器。"
                                "（peft 保存的适配器请用 peft.PeftModel.from_pretrained 加载。）")
    resave = "请用 save_adapter(model, folder) 重新保存适配器（两个文件要一起复制）。"
    cfg = read_json(folder / ADAPTER_CONFIG, "适配器配置", resave)
    needed = {"base_shapes": dict, "target_modules": list, "r": int, "alpha": (int, float)}
    bad = [k for k, t in needed.items() if not isinstance(cfg, dict) or not isinstance(cfg.get(k), t)]
    if bad:
        raise ValueError(f"{folder / ADAPTER_CONFIG} 缺少字段 {bad}（或者类型不对）：它不完整，"
                         f"或者不是 save_adapter 写的。{resave}")
    tensors = read_safetensors(folder / ADAPTER_WEIGHTS, "适配器权重", resave)
    modules = dict(model.named_modules())
    for name, shape in cfg["base_shapes"].items():
        m = modules.get(name)
        base = m.base if isinstance(m, LoRALinear) else m
        if not isinstance(base, nn.Linear):
            raise ValueError(f"这个适配器要装在 {name} 上，但模型里没有这个线性层：适配器是给另一种结构的模型训练的。"
                             "请加载训练它时用的那个基座模型。")
        if list(base.weight.shape) != shape:
            raise ValueError(f"适配器与模型的形状不符：{name} 在训练适配器的基座里是 {tuple(shape)}，"
                             f"在这个模型里是 {tuple(base.weight.shape)}。适配器只能装回训练它时用的同一个基座模型"
                             "（同样的 dim、层数、头数）。")
    if not lora_modules(model):
        inject_lora(model, targets=cfg["target_modules"], r=cfg["r"], alpha=cfg["alpha"],
                    train_modules=cfg.get("train_modules", ()), rslora=bool(cfg.get("rslora", False)))
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing or sorted(lora_modules(model)) != sorted(cfg["target_modules"]):
        raise ValueError(f"模型上已经装的 LoRA 与适配器不一致（适配器里有而模型里没有：{missing[:5]}）。"
                         "请在没有装 LoRA 的基座模型上加载适配器。")
    with torch.no_grad():
        for name, t in tensors.items():
            if params[name].shape != t.shape:
                raise ValueError(f"适配器与模型的形状不符：{name} 在适配器里是 {tuple(t.shape)}，"
                                 f"在模型里是 {tuple(params[name].shape)}（r 不同，或基座的结构不同）。")
            params[name].copy_(t.to(params[name].dtype))
    return model


# ---------------------------------------------------------------- 与 peft / transformers 互通
_PEFT_PREFIXES = ("base_model.model.model.", "base_model.model.")


def _peft_name(key: str) -> str:
    """peft 适配器里的张量名 → course_lib 的参数名。

    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' → 'layers.0.self_attn.q_proj.lora_A'
    'base_model.model.model.embed_tokens.weight'（modules_to_save）  → 'embed_tokens.weight'
    """
    for prefix in _PEFT_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for ab in ("lora_A", "lora_B"):
        if key.endswith(f".{ab}.weight"):
            return key[: -len(".weight")]
    return key


def to_peft_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """course_lib 的适配器张量名 → peft 的名字（_peft_name 的逆运算），可以交给 peft.set_peft_model_state_dict。

    'layers.0.self_attn.q_proj.lora_A' → 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    """
    out = {}
    for name, t in tensors.items():
        key = name + ".weight" if name.endswith(("lora_A", "lora_B")) else name
        out[("base_model.model." if key.startswith("lm_head") else "base_model.model.model.") + key] = t
    return out


def load_peft_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """把 peft 保存的 LoRA 适配器（adapter_config.json + adapter_model.safetensors）装到 course_lib 的 Llama 上。

    peft 的 LoRA 与本文件的 LoRALinear 是同一个公式：lora_A (r, in)、lora_B (out, r)、缩放 lora_alpha / r
    （use_rslora=True 时 lora_alpha / √r，对应 rslora=True），
    子模块名也相同（course_lib 的 Llama 与 HF 的 LlamaForCausalLM 名字一一对应），所以只需要改张量名。
    modules_to_save 里整体训练的模块（例如 embed_tokens）也一起载入。原地修改并返回 model。
    """
    check_module(model, "load_peft_adapter")
    folder = as_path(folder, "peft 适配器文件夹")
    cfg_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{folder} 里没有 adapter_config.json 和 adapter_model.safetensors，"
                                "不是 peft 的 save_pretrained 保存的适配器。")
    refetch = "请用 peft 的 save_pretrained 重新保存适配器，或重新下载。"
    cfg = read_json(cfg_path, "peft 适配器配置", refetch)
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} 应该是一个 JSON 对象，收到的是 {type(cfg).__name__}。{refetch}")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"这是 {cfg.get('peft_type')} 适配器，load_peft_adapter 只认识 LoRA。")
    unsupported = {"use_dora": cfg.get("use_dora"),
                   "fan_in_fan_out": cfg.get("fan_in_fan_out"), "rank_pattern": cfg.get("rank_pattern"),
                   "alpha_pattern": cfg.get("alpha_pattern"), "bias": cfg.get("bias", "none") != "none"}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"适配器用了 {', '.join(bad)}，手写的 LoRALinear 只实现了最基本的 LoRA"
                         "（缩放 alpha / r 或 rsLoRA 的 alpha / √r、没有偏置、所有层同一个 r）。请用 peft 的 PeftModel 加载它。")
    bad = [k for k in ("r", "lora_alpha") if isinstance(cfg.get(k), bool) or not isinstance(cfg.get(k), (int, float))]
    if bad:
        raise ValueError(f"{cfg_path} 缺少字段 {bad}（或者不是数字）：LoRA 的秩 r 和缩放 lora_alpha 都要有。{refetch}")
    raw = read_safetensors(weights, "peft 适配器权重", refetch)
    tensors = {_peft_name(k): v for k, v in raw.items()}
    targets = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(("lora_A", "lora_B"))})
    if not targets:
        raise ValueError(f"{weights} 里没有 lora_A / lora_B 张量。")
    full = sorted({k.rsplit(".", 1)[0] for k in tensors if not k.endswith(("lora_A", "lora_B"))})
    if lora_modules(model):
        raise ValueError("模型上已经装了 LoRA：请在没有装 LoRA 的基座模型上加载 peft 适配器。")
    modules = dict(model.named_modules())
    for name in targets:
        if not isinstance(modules.get(name), nn.Linear):
            raise ValueError(f"peft 适配器要装在 {name} 上，但模型里没有这个线性层：它是给另一种结构的模型训练的。")
        a, b = tensors[name + ".lora_A"], tensors[name + ".lora_B"]
        if (b.shape[0], a.shape[1]) != tuple(modules[name].weight.shape):
            raise ValueError(f"适配器与模型的形状不符：{name} 的 ΔW 是 {(b.shape[0], a.shape[1])}，"
                             f"模型里是 {tuple(modules[name].weight.shape)}。请加载训练它时用的同一个基座模型。")
    inject_lora(model, targets=targets, r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                dropout=float(cfg.get("lora_dropout") or 0.0), train_modules=full, rslora=bool(cfg.get("use_rslora")))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            if name not in params or params[name].shape != t.shape:
                raise ValueError(f"适配器里的 {name} {tuple(t.shape)} 在模型里找不到对应形状的参数。")
            params[name].copy_(t.to(params[name].dtype))
    return model
