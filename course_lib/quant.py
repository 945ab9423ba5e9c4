"""第 08 章：量化（quantization）——用更少的比特存权重。

一个 float32 权重占 4 字节。量化把它换成一个小整数 q 加上一小组共享的浮点数（缩放因子 scale，
有时还有零点 zero），用的时候再还原（反量化，dequantize）：

    absmax（对称）    q = round(w / s)，      s = max|w| / 127             ŵ = q · s
    零点（非对称）    q = round(w / s) + z，  s = (max - min) / 255        ŵ = (q - z) · s
    NF4              q = 最接近 w / max|w| 的那个 NF4 等级的编号（0…15）     ŵ = NF4[q] · max|w|

缩放因子由多少个权重共享，叫粒度（granularity）：整个张量一个（per tensor）、每个输出通道一个
（per channel，即权重矩阵的每一行）、每 group_size 个一组（group-wise / block-wise）。组越小误差越小，
但要多存一些缩放因子。

本模块提供五种方案（SCHEMES），都能用 quantize(w, scheme) 得到一个 QuantizedTensor：

    int8_tensor     absmax int8，整个张量一个缩放因子               约 8 比特/权重
    int8_channel    absmax int8，每个输出通道一个缩放因子            约 8.1 比特/权重
    int8_zeropoint  零点 uint8，每个输出通道一个缩放因子和零点         约 8.2 比特/权重
    int4_group      零点 4 比特，每 group_size 个一组，两个数挤进一个字节  约 4.6 比特/权重（组大小 64）
    nf4             NF4（QLoRA 的 4 比特正态浮点），每块一个 absmax    约 4.5 比特/权重（块大小 64）

QuantLinear 存打包好的整数权重，前向时现场反量化成浮点再做矩阵乘法；quantize_model 把模型里的
nn.Linear 都换成 QuantLinear（默认不动 lm_head，嵌入层本来就不是 nn.Linear，保持浮点，原因见该函数）。
第 08 章 notebook 把它们和 bitsandbytes（transformers 的 BitsAndBytesConfig）放在一起比较。
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_module

SCHEMES = ("int8_tensor", "int8_channel", "int8_zeropoint", "int4_group", "nf4")
SCHEME_LABELS = {
    "int8_tensor": "int8（absmax，逐张量）",
    "int8_channel": "int8（absmax，逐通道）",
    "int8_zeropoint": "int8（零点，逐通道）",
    "int4_group": "int4（零点，逐组）",
    "nf4": "NF4（逐块 absmax）",
}
DEFAULT_GROUP_SIZE = 64  # 和 bitsandbytes 4 比特的默认块大小相同

# QLoRA 论文（Dettmers et al., 2023）附录 E 公布的 16 个 NF4 等级，也就是 bitsandbytes 里的那张表。
# nf4_levels() 从正态分布的分位数重新算出它们；tests/test_quant.py 核对两者一致。
NF4_PUBLISHED = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)


# ---------------------------------------------------------------- 输入检查与分组
def _check_weight(w: torch.Tensor, name: str = "权重") -> None:
    if not torch.is_tensor(w) or not w.is_floating_point():
        kind = w.dtype if torch.is_tensor(w) else type(w).__name__
        raise TypeError(f"{name}必须是浮点张量（float32 / float16 / bfloat16），收到 {kind}。"
                        "已经量化过的整数张量请先反量化（dequantize）。")
    if w.numel() == 0:
        raise ValueError(f"{name}是空张量（形状 {tuple(w.shape)}），没有东西可以量化。")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name}里有 NaN 或 inf：absmax 和 min/max 都会变成 NaN/inf，量化没有意义。"
                         "请先检查模型是否训练发散（loss 变成 nan）。")


def _check_bits(bits: int, low: int = 2, high: int = 8) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not low <= bits <= high:
        raise ValueError(f"bits 必须是 {low} 到 {high} 之间的整数，收到 {bits!r}。常用 8 或 4。")


def _grouped(w: torch.Tensor, per_channel: bool, group_size: int | None) -> torch.Tensor:
    """按粒度把 w 排成 (行数, 组数, 每组个数)：同一组（最后一维）共享一个缩放因子。"""
    if group_size is not None:
        if w.dim() != 2:
            raise ValueError(f"逐组量化只支持二维权重矩阵 (out_features, in_features)，收到形状 {tuple(w.shape)}。")
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
            raise ValueError(f"group_size 必须是正整数，收到 {group_size!r}。常用 64 或 128。")
        n = w.shape[1]
        if n % group_size != 0:
            divisors = [d for d in (32, 64, 128, 256) if n % d == 0]
            hint = "例如 " + "、".join(map(str, divisors)) if divisors else f"{n} 的某个约数"
            raise ValueError(f"组大小 group_size={group_size} 不能整除每行的长度 in_features={n}：最后一组会不完整。"
                             f"请换一个能整除 {n} 的组大小（{hint}）。")
        return w.reshape(w.shape[0], n // group_size, group_size)
    if per_channel:
        if w.dim() != 2:
            raise ValueError(f"逐通道量化只支持二维权重矩阵 (out_features, in_features)，收到形状 {tuple(w.shape)}。"
                             "一维或更高维的张量请用逐张量（per_channel=False）。")
        return w.reshape(w.shape[0], 1, w.shape[1])
    return w.reshape(1, 1, -1)


def _grouped_apply(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
    """ŵ = (q - z) · s：scale、zero 是标量（逐张量）或 (行数, 组数)，按组广播到 q 上，返回 float32、形状同 q。"""
    qf = q.float()
    if scale.dim() == 0:
        return (qf - zero.float() if zero is not None else qf) * scale.float()
    rows, groups = scale.shape
    g = qf.view(rows, groups, -1)                                       # (行, 组, 每组个数)
    if zero is not None:
        g = g - zero.float()[..., None]
    return (g * scale.float()[..., None]).view(q.shape)


def _squeeze(t: torch.Tensor, per_channel: bool, group_size: int | None) -> torch.Tensor:
    """(行数, 组数, 1) → 逐张量时是标量，否则 (行数, 组数)。"""
    return t.reshape(t.shape[0], t.shape[1]) if (per_channel or group_size is not None) else t.reshape(())


# ---------------------------------------------------------------- absmax（对称）量化
def quantize_absmax(w: torch.Tensor, bits: int = 8, per_channel: bool = False,
                    group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """对称的 absmax 量化：s = max|w| / (2^(bits-1) - 1)，q = round(w / s)，取值 -127…127（8 比特）。

    粒度：默认整个张量一个 s；per_channel=True 时每行（每个输出通道）一个；给了 group_size 时每行每
    group_size 个一组。返回 (q, scale)：q 是 int8，形状同 w；scale 是 float32，逐张量时是标量，
    否则形状 (行数, 组数)。全为 0 的组 scale 记为 1（q 全为 0，反量化仍是 0）。
    """
    _check_weight(w)
    _check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    g = _grouped(w.detach().float(), per_channel, group_size)
    absmax = g.abs().amax(dim=-1, keepdim=True)                        # (行, 组, 1)
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    q = torch.round(g / scale).clamp(-qmax, qmax).to(torch.int8)
    return q.reshape(w.shape), _squeeze(scale, per_channel, group_size)


def dequantize_absmax(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """ŵ = q · s（float32）。"""
    return _grouped_apply(q, scale)


# ---------------------------------------------------------------- 零点（非对称）量化
def quantize_zeropoint(w: torch.Tensor, bits: int = 8, per_channel: bool = True,
                       group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """非对称的零点（zero-point）量化：把 [min, max] 均匀切成 2^bits - 1 份，q 取值 0…2^bits - 1。

    s = (max - min) / (2^bits - 1)，零点 z = round(-min / s)，q = clamp(round(w / s) + z)，ŵ = (q - z) · s。
    min、max 先和 0 取并集（min ≤ 0 ≤ max），所以 0 总能被精确表示（q = z）。
    权重分布不对称时（例如全是正数），它比 absmax 少浪费一半的等级。
    返回 (q, scale, zero)：q 是 uint8（形状同 w），scale 是 float32，zero 是 uint8，后两者形状同 quantize_absmax。
    """
    _check_weight(w)
    _check_bits(bits)
    qmax = 2 ** bits - 1
    g = _grouped(w.detach().float(), per_channel, group_size)
    lo = g.amin(dim=-1, keepdim=True).clamp(max=0.0)
    hi = g.amax(dim=-1, keepdim=True).clamp(min=0.0)
    scale = torch.where(hi > lo, (hi - lo) / qmax, torch.ones_like(hi))
    zero = torch.round(-lo / scale).clamp(0, qmax)
    q = (torch.round(g / scale) + zero).clamp(0, qmax).to(torch.uint8)
    return (q.reshape(w.shape), _squeeze(scale, per_channel, group_size),
            _squeeze(zero, per_channel, group_size).to(torch.uint8))


def dequantize_zeropoint(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """ŵ = (q - z) · s（float32）。"""
    return _grouped_apply(q, scale, zero)


# ---------------------------------------------------------------- 4 比特打包
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """把取值 0…15 的整数两两挤进一个字节：前一个放高 4 位，后一个放低 4 位（和 bitsandbytes 的顺序相同）。

    q: (..., n)，n 必须是偶数 → uint8 (..., n/2)。
    """
    if q.is_floating_point():
        raise TypeError(f"pack_int4 要的是 0…15 的整数张量，收到 {q.dtype}。请先量化（round 后转成 torch.uint8）。")
    if q.dim() == 0 or q.shape[-1] % 2 != 0:
        raise ValueError(f"pack_int4 要求最后一维的长度是偶数（两个 4 比特数拼成一个字节），收到形状 {tuple(q.shape)}。")
    q = q.to(torch.int16)
    if q.numel() and (q.min() < 0 or q.max() > 15):
        raise ValueError(f"4 比特只能表示 0…15，收到的值在 [{int(q.min())}, {int(q.max())}] 之间。"
                         "有符号的 -8…7 请先加 8 变成 0…15。")
    return ((q[..., 0::2] << 4) | q[..., 1::2]).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """pack_int4 的逆运算：uint8 (..., m) → 取值 0…15 的 uint8 (..., 2m)。"""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 要的是 pack_int4 输出的 torch.uint8 张量，收到 {packed.dtype}。")
    high, low = packed >> 4, packed & 0x0F
    return torch.stack([high, low], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


# ---------------------------------------------------------------- NF4
def nf4_levels() -> torch.Tensor:
    """NF4（4-bit NormalFloat）的 16 个等级，按 QLoRA 论文的做法从标准正态分布的分位数算出来。

    神经网络的权重大致服从正态分布。让每个等级「管」一样多的权重，等级就该放在正态分布的分位数上：
    中间密、两头疏。为了让 0 恰好是一个等级，正半边取 9 个分位点（去掉 0.5 处）得 8 个正数，
    负半边取 8 个（去掉 0.5 处）得 7 个负数，再加上 0。两端的概率 offset = 1 - (1/32 + 1/30)/2
    避开了 ±∞。最后除以最大值，把等级缩放到 [-1, 1]。
    """
    offset = 1 - 0.5 * (1 / 32 + 1 / 30)                                                   # ≈ 0.9677
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 个
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 个
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.abs().max()).float()


NF4_LEVELS = nf4_levels()


def quantize_nf4(w: torch.Tensor, block_size: int = DEFAULT_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 量化：每行每 block_size 个权重一块，块内除以 absmax 落到 [-1, 1]，再取最近的 NF4 等级的编号。

    返回 (idx, absmax)：idx 是取值 0…15 的 uint8（未打包，形状同 w），absmax 是 float32 (行数, 块数)。
    """
    _check_weight(w)
    g = _grouped(w.detach().float(), per_channel=False, group_size=block_size)
    absmax = g.abs().amax(dim=-1, keepdim=True)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    # 最近的等级 = 落在哪两个相邻等级的中点之间（bucketize 比对 16 个等级逐一求距离省内存）
    levels = NF4_LEVELS.to(w.device)
    idx = torch.bucketize(g / absmax, (levels[1:] + levels[:-1]) / 2).to(torch.uint8)
    return idx.reshape(w.shape), absmax.reshape(g.shape[0], g.shape[1])


def dequantize_nf4(idx: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """ŵ = NF4[idx] · absmax（float32）。"""
    levels = NF4_LEVELS.to(idx.device).index_select(0, idx.reshape(-1).int()).view(idx.shape)  # 查表：编号 → 等级
    return _grouped_apply(levels, absmax)


# ---------------------------------------------------------------- 统一的接口
@dataclass
class QuantizedTensor:
    """一个量化后的张量：整数数据（4 比特方案已两两打包）+ 缩放因子（+ 零点）+ 还原所需的信息。"""
    scheme: str
    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    shape: tuple
    group_size: int | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """还原成浮点张量（形状同原来的权重）。"""
        if self.scheme in ("int8_tensor", "int8_channel"):
            w = dequantize_absmax(self.data, self.scale)
        elif self.scheme == "int8_zeropoint":
            w = dequantize_zeropoint(self.data, self.scale, self.zero)
        elif self.scheme == "int4_group":
            w = dequantize_zeropoint(unpack_int4(self.data), self.scale, self.zero)
        else:  # nf4
            w = dequantize_nf4(unpack_int4(self.data), self.scale)
        return w.reshape(self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        """实际占用的字节数：整数数据 + 缩放因子 + 零点。"""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.zero) if t is not None)

    @property
    def bits_per_weight(self) -> float:
        """平均每个权重占多少比特（含缩放因子、零点的开销）。"""
        return 8 * self.nbytes / math.prod(self.shape)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"不认识的量化方案 {scheme!r}。可选：{', '.join(SCHEMES)}。")


def quantize(w: torch.Tensor, scheme: str, group_size: int = DEFAULT_GROUP_SIZE) -> QuantizedTensor:
    """用 SCHEMES 里的一种方案量化 w，返回 QuantizedTensor。group_size 只对 int4_group、nf4 起作用。"""
    _check_scheme(scheme)
    shape = tuple(w.shape) if torch.is_tensor(w) else None  # 不是张量时，下面的量化函数给出中文错误
    if scheme == "int8_tensor":
        q, s = quantize_absmax(w, 8)
        return QuantizedTensor(scheme, q, s, None, shape)
    if scheme == "int8_channel":
        q, s = quantize_absmax(w, 8, per_channel=True)
        return QuantizedTensor(scheme, q, s, None, shape)
    if scheme == "int8_zeropoint":
        q, s, z = quantize_zeropoint(w, 8, per_channel=True)
        return QuantizedTensor(scheme, q, s, z, shape)
    if scheme == "int4_group":
        q, s, z = quantize_zeropoint(w, 4, group_size=group_size)
        return QuantizedTensor(scheme, pack_int4(q), s, z, shape, group_size)
    idx, absmax = quantize_nf4(w, group_size)
    return QuantizedTensor(scheme, pack_int4(idx), absmax, None, shape, group_size)


def quant_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict:
    """量化误差的统计：最大绝对误差、平均绝对误差、均方根误差（RMSE）、相对误差 ‖w-ŵ‖/‖w‖、
    信号与量化噪声之比 SQNR（dB，越大越好；每多 1 比特约多 6 dB）。"""
    if w.shape != w_hat.shape:
        raise ValueError(f"原权重形状 {tuple(w.shape)} 和反量化结果的形状 {tuple(w_hat.shape)} 不同，无法比较。")
    w, w_hat = w.detach().float(), w_hat.detach().float()
    err = w_hat - w
    signal, noise = w.pow(2).mean().item(), err.pow(2).mean().item()
    return {
        "max_abs": err.abs().max().item(),
        "mean_abs": err.abs().mean().item(),
        "rmse": math.sqrt(noise),
        "rel_error": math.sqrt(noise / signal) if signal > 0 else float("nan"),
        "sqnr_db": 10 * math.log10(signal / noise) if noise > 0 else float("inf"),
    }


# ---------------------------------------------------------------- 量化的线性层与整个模型
class QuantLinear(nn.Module):
    """存量化权重的线性层：前向时把权重现场反量化（dequantize on the fly）成浮点，再做 x @ Wᵀ (+ b)。

    省的是**存储**（和显存/内存带宽）；矩阵乘法本身还是浮点的。GPU 上的量化库会把「反量化 + 乘法」
    融合在一个内核里，这里为了看得清楚分两步做。整数权重、缩放因子、零点都登记为 buffer，
    所以 .to(device)、state_dict() 照常工作。
    """

    def __init__(self, qweight: QuantizedTensor, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(qweight, QuantizedTensor):
            raise TypeError(f"QuantLinear 要的是 quantize(...) 返回的 QuantizedTensor，收到 {type(qweight).__name__}。"
                            "从 nn.Linear 量化请用 QuantLinear.from_linear(linear, scheme)。")
        self.out_features, self.in_features = qweight.shape
        self.scheme, self.group_size = qweight.scheme, qweight.group_size
        self.register_buffer("qweight", qweight.data)
        self.register_buffer("scale", qweight.scale)
        self.register_buffer("zero", qweight.zero)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str, group_size: int = DEFAULT_GROUP_SIZE) -> "QuantLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_linear 要的是 nn.Linear，收到 {type(linear).__name__}。")
        return cls(quantize(linear.weight, scheme, group_size), linear.bias)

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.scheme, self.qweight, self.scale, self.zero,
                               (self.out_features, self.in_features), self.group_size)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.quantized().dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight(x.dtype)                       # (out, in)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        bits = self.quantized().bits_per_weight
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}{group}, "
                f"{bits:.2f} 比特/权重")


def _skipped(name: str, skip) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def quantize_model(model: nn.Module, scheme: str, group_size: int = DEFAULT_GROUP_SIZE,
                   skip=("lm_head",), inplace: bool = False) -> nn.Module:
    """把模型里的每个 nn.Linear 换成 QuantLinear，返回量化后的模型（默认是一份拷贝，原模型不变）。

    - skip：不量化的层名（完整名字或最后一段，例如 "lm_head"、"down_proj"）。
    - 嵌入层（nn.Embedding）保持浮点，lm_head 默认也不量化，原因有二：
      ① 课程的 Llama 共享输入输出嵌入（tie_weights）：lm_head 和 embed_tokens 是同一个张量。
         只量化 lm_head 会把这份共享拆成「一份浮点嵌入 + 一份量化副本」，内存不降反升；
      ② 输出层的误差直接加在 logits 上，是全模型最敏感的一层；嵌入只是查表，不做矩阵乘法，
         量化它省不了计算。bitsandbytes / transformers 也默认不量化 lm_head。
    - 一个 nn.Linear 都没换时报错（多半是传错了模型，或者它已经量化过了）。
    """
    _check_scheme(scheme)
    check_module(model, "quantize_model")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)  # skip="lm_head" 是一个名字，不是七个字母
    if not inplace:
        model = copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and not _skipped(name, skip)]
    if not targets:
        raise ValueError("模型里没有可以量化的 nn.Linear（已经量化过的层是 QuantLinear，不会再量化；"
                         f"skip={tuple(skip)} 里的层也会跳过）。请传入原始的浮点模型。")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(linear, scheme, group_size))
    return model


def _bnb_extras(model: nn.Module) -> list[torch.Tensor]:
    """bitsandbytes 把缩放因子挂在权重张量（或层）的属性上，不是参数也不是 buffer：4 比特的 quant_state.absmax
    （双重量化时再加上第二级的 absmax 和 offset）；8 比特的 SCB（每行一个 float32 缩放因子）——加载后挂在权重上，
    第一次前向之后被挪到层的 state.SCB 里。"""
    extra = []
    for t in model.parameters():
        state = getattr(t, "quant_state", None)
        if state is not None:
            extra.append(state.absmax)
            if getattr(state, "nested", False):
                extra += [state.state2.absmax, state.offset]
        extra.append(getattr(t, "SCB", None))
    for module in model.modules():
        extra.append(getattr(getattr(module, "state", None), "SCB", None))
    return [t for t in extra if torch.is_tensor(t)]


def weight_memory(model: nn.Module) -> int:
    """模型权重一共占多少字节：参数 + 持久的 buffer（QuantLinear 的整数权重、缩放因子、零点都在这里），
    共享的张量（如 tie_weights 的嵌入）只算一次；RoPE 的 cos/sin 表随时能重算，不算。

    也能用在 bitsandbytes 量化的 transformers 模型上：它的缩放因子挂在属性上（见 _bnb_extras），
    这里一并算进去（model.get_memory_footprint() 不算它们，所以比这里小一点）。
    """
    non_persistent = {id(b) for m in model.modules() for n, b in m._buffers.items()
                      if b is not None and n in m._non_persistent_buffers_set}
    tensors = list(model.parameters()) + [b for b in model.buffers() if id(b) not in non_persistent]
    seen, total = set(), 0
    for t in tensors + _bnb_extras(model):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def disable_bnb_cpu_repacking(model: nn.Module) -> int:
    """关掉 bitsandbytes 4 比特层在 CPU 上的「推理重排」，返回改动的层数。

    bitsandbytes 0.50 在支持 AVX512-BF16 的 CPU 上，第一次在 eval 模式、不求梯度地调用 Linear4bit 时，
    会把权重就地重排成只能推理的格式，之后每次都用 bf16 的 gemv_4bit 计算——这个算子没有反向传播：
    先评测、再做 QLoRA 训练，梯度就悄悄地传不过量化层（前面几层的 LoRA 收不到梯度），也没有报错，只有一条警告。
    关掉它以后，CPU 上和 GPU 上一样「反量化 + 浮点矩阵乘法」，计算精度就是 bnb_4bit_compute_dtype，结果与机器无关。
    对没有这个功能的机器、8 比特层和普通层什么也不做。
    """
    n = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n
