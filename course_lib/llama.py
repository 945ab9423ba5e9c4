"""第 04–05 章：Llama 2，和 Hugging Face 的 LlamaForCausalLM 逐个张量对应，可以直接互相转换。

和第 03 章的 GPT 比，只改了四处：

Llama
├── embed_tokens  词嵌入 (V, C)；没有位置嵌入——位置信息由 RoPE 在注意力里加入
├── layers × n_layers，每个 LlamaBlock（pre-norm）：
│     x = x + Attention(RMSNorm(x))   ← ① RMSNorm 代替 LayerNorm（不减均值，没有偏置）
│                                      ② 旋转位置编码 RoPE 作用在 q、k 上
│                                      ③ 分组查询注意力 GQA：n_kv_heads 组 k、v 被 n_heads 个 q 头共享
│     x = x + SwiGLU(RMSNorm(x))      ← ④ 门控前馈网络 down(silu(gate(x)) · up(x))
├── norm     最后的 RMSNorm
└── lm_head  输出层 (C → V)；tie_weights=True 时与 embed_tokens 共享权重

子模块的名字与 Hugging Face 一一对应（HF 的名字只是多一个 "model." 前缀，lm_head 除外），
RoPE 用和 HF 相同的「前后两半」配对（rotate_half），所以导出时不需要重排任何权重（见 hf.py）。
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import bad_input, check_bools, check_int, check_ints, check_numbers, embed, next_token_loss
from .generate import stream


@dataclass
class LlamaConfig:
    vocab_size: int
    max_seq_len: int = 256              # 上下文长度：RoPE 预先算好这么多个位置
    dim: int = 256                      # 隐藏维度 C（HF: hidden_size）
    n_layers: int = 4
    n_heads: int = 8                    # q 的头数
    n_kv_heads: int | None = None       # k、v 的头数；None → 等于 n_heads（普通多头注意力）
    hidden_dim: int | None = None       # 前馈网络中间维度；None → 按 Llama 的规则从 dim 算出
    multiple_of: int = 32               # hidden_dim 向上取整到它的倍数（对 GPU 友好）
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0         # RoPE 的底数 θ：越大，最慢的那个旋转越慢，能区分的距离越远
    tie_weights: bool = False           # lm_head 与 embed_tokens 共享权重（Llama 2 不共享）

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        check_ints(self, ("vocab_size", "max_seq_len", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of"))
        check_numbers(self, ("norm_eps", "rope_theta"), strict=True)
        check_bools(self, ("tie_weights",))
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim ({self.dim}) 必须能被 n_heads ({self.n_heads}) 整除：每个头分到 dim / n_heads 维。"
                             "请调整 dim 或 n_heads。")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) 必须能被 n_kv_heads ({self.n_kv_heads}) 整除："
                             "每组 k、v 由 n_heads / n_kv_heads 个 q 头共享。请把 n_kv_heads 改成 n_heads 的约数。")
        if self.head_dim % 2 != 0:
            raise ValueError(f"每个头的维度 dim / n_heads = {self.head_dim} 必须是偶数：RoPE 把维度两两配对旋转。"
                             "请调整 dim 或 n_heads。")
        if self.ffn_dim_multiplier is not None:
            check_numbers(self, ("ffn_dim_multiplier",), strict=True)
        if self.hidden_dim is None:
            self.hidden_dim = llama_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
        check_ints(self, ("hidden_dim",))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


def llama_hidden_dim(dim: int, multiple_of: int = 32, ffn_dim_multiplier: float | None = None) -> int:
    """Llama 的前馈中间维度：从 4·dim 出发乘 2/3（SwiGLU 有三个矩阵，这样参数量与 4·dim 的两矩阵 MLP 相当），
    可选再乘 ffn_dim_multiplier，最后向上取整到 multiple_of 的倍数。
    dim=4096、multiple_of=256 → 11008（Llama 2 7B；默认的 multiple_of=32 会得到 10944）。"""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    """均方根归一化：x / √(mean(x²) + eps) · weight。不减均值、没有偏置，比 LayerNorm 少算一步。

    在 float32 里计算再转回输入的精度（和 HF 一样），bf16 训练时也稳定。
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


# ---------------------------------------------------------------- 旋转位置编码（RoPE）
def rope_cos_sin(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """预先算好每个位置的 cos、sin，形状都是 (max_seq_len, head_dim)。

    第 i 对维度的旋转角速度是 θ^(-2i/head_dim)：前几对转得快（分辨近处），后几对转得慢（分辨远处）。
    位置 m 的旋转角 = m × 角速度。「前后两半」配对：第 i 维与第 i + head_dim/2 维是一对，
    所以角度表拼成 [freqs, freqs] 两份。
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)  # (hd/2,)
    positions = torch.arange(max_seq_len, dtype=torch.int64).float()                               # (T,)
    angles = torch.outer(positions, inv_freq)                                                       # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)                                                    # (T, hd)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] → [-x2, x1]：把每一对 (x1_i, x2_i) 逆时针转 90°。"""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """把 x (..., T, head_dim) 的每一对维度旋转对应位置的角度：x·cos + rotate_half(x)·sin。

    旋转后的 q_m·k_n 只取决于 m - n（相对位置），这就是 RoPE 的要点（tests/test_llama.py 里有断言）。
    """
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


# ---------------------------------------------------------------- KV 缓存
class KVCache:
    """增量解码用的 KV 缓存：每层预先分配 (B, n_kv_heads, capacity, head_dim) 的 k、v。

    先把整段提示一次算完（预填充，prefill），之后每步只送入 1 个新 token，
    它的 q 与缓存里所有旧的 k、v 做注意力——不必每步重算整段。pos 是已经缓存的位置数。
    """

    def __init__(self, cfg: LlamaConfig, batch_size: int = 1, capacity: int | None = None,
                 device=None, dtype: torch.dtype = torch.float32):
        check_int(batch_size, "KV 缓存的 batch_size")
        self.capacity = min(check_int(capacity, "KV 缓存的 capacity", allow_none=True) or cfg.max_seq_len, cfg.max_seq_len)
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, self.capacity, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """写入第 layer 层新位置的 k、v (B, n_kv_heads, T, hd)，返回到目前为止的全部 k、v。"""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class SlotKVCache:
    """批量解码用的「槽位」KV 缓存（第 11 章的服务器）：每个槽位（batch 的一行）是一条独立的序列，长度各不相同。

    新序列先用普通的 KVCache 单独预填充，再 insert 进一个空槽位；之后每步 forward 只送入 active 这些槽位的各 1 个新 token：
    每行的 RoPE 位置 = 它自己的长度，注意力用掩码只看它自己写过的位置。lengths[i] 是第 i 个槽位已缓存的位置数。
    """

    def __init__(self, cfg: LlamaConfig, slots: int, capacity: int | None = None, device=None,
                 dtype: torch.dtype = torch.float32, static: bool = False):
        check_int(slots, "槽位数 slots")
        self.capacity = min(check_int(capacity, "KV 缓存的 capacity", allow_none=True) or cfg.max_seq_len, cfg.max_seq_len)
        shape = (cfg.n_layers, slots, cfg.n_kv_heads, self.capacity, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.active = torch.zeros(0, dtype=torch.long, device=device)     # 这一步参与计算的槽位
        self.span = self.capacity                                          # 这一步要看的位置数（见 update）
        # static=True：每一步都看全部 capacity 个位置（形状永远不变），torch.compile 编译一次就能一直用
        self.static = static

    def insert(self, slot: int, cache: KVCache) -> None:
        """把单条序列预填充好的 KVCache（batch 1）复制进第 slot 个槽位。"""
        n = cache.pos
        if n > self.capacity:
            raise ValueError(f"序列有 {n} 个位置，超过了槽位的容量 {self.capacity}。")
        self.k[:, slot, :, :n] = cache.k[:, 0, :, :n]
        self.v[:, slot, :, :n] = cache.v[:, 0, :, :n]
        self.lengths[slot] = n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """写入 active 各槽位的新位置（每行 1 个 token），返回这些槽位的 k、v (B, Hkv, span, hd) 和注意力掩码。

        span = 这一步最长的那条序列的长度 + 1（Llama._slot_forward 每步算一次）：更靠后的位置谁也没写过，
        不必取出来再被掩码挡掉——序列短的时候，每层少搬很多数据、注意力也少算很多。"""
        rows, pos = self.active, self.lengths[self.active]
        self.k[layer, rows, :, pos] = k[:, :, 0]
        self.v[layer, rows, :, pos] = v[:, :, 0]
        mask = torch.arange(self.span, device=k.device)[None, :] <= pos[:, None]          # (B, span)
        return self.k[layer, rows, :, :self.span], self.v[layer, rows, :, :self.span], mask[:, None, None, :]


# ---------------------------------------------------------------- 模型
class Attention(nn.Module):
    """因果自注意力 + RoPE + 分组查询注意力（GQA）。n_kv_heads == n_heads 时就是普通多头注意力。"""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        n_rep = self.n_heads // self.n_kv_heads
        if isinstance(cache, SlotKVCache):   # 批量解码：每行长度不同，用掩码挡住没写过的位置
            k, v, mask = cache.update(layer, k, v)
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.o_proj(y.transpose(1, 2).contiguous().view(B, T, self.n_heads * self.head_dim))
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)                                             # (B, Hkv, start+T, hd)
        # GQA：每组 k、v 复制给 n_heads / n_kv_heads 个 q 头（第 h 个 q 头用第 h // n_rep 组）
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)      # (B, H, S, hd)
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # 新的 T 个 query 位于 start…start+T-1：能看缓存里的全部位置，以及自己和之前的新位置
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_heads * self.head_dim)      # (B, T, H·hd)
        return self.o_proj(y)


class FeedForward(nn.Module):
    """SwiGLU 前馈网络：down(silu(gate(x)) ⊙ up(x))。gate 决定每个中间维度「开多大」。"""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"Llama 需要一个 LlamaConfig，收到 {type(cfg).__name__}。字典请写成 Llama(LlamaConfig(**配置))。")
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_rope()
        self.apply(self._init_weights)
        # 和 GPT 一样：写回残差流的投影层初始化再缩小 1/√(2·n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def reset_rope(self, device=None) -> None:
        """（重新）算出 RoPE 的 cos/sin 表。persistent=False：它们随时能从 config 重算，不存进检查点。"""
        cfg = self.config
        cos, sin = rope_cos_sin(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def num_params(self, non_embedding: bool = False) -> int:
        """参数量（共享的权重只算一次）。non_embedding=True 时不算词嵌入和（不共享时的）输出层。"""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
            if not self.config.tie_weights:
                n -= self.lm_head.weight.numel()
        return n

    def new_cache(self, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        """为增量解码准备一个空的 KV 缓存（最多 capacity 个位置，默认 max_seq_len）。"""
        w = self.embed_tokens.weight
        return KVCache(self.config, batch_size, capacity, device=w.device, dtype=w.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        """idx: (B, T) → (logits (B, T, V), loss)。

        cache=None：普通的整段前向（训练用）。传入 KVCache：idx 接在缓存里已有的 cache.pos 个位置之后，
        RoPE 用的位置从 cache.pos 开始，算完 cache.pos 增加 T。
        """
        try:
            B, T = idx.shape
        except (AttributeError, ValueError):
            raise bad_input(idx) from None
        if isinstance(cache, SlotKVCache):
            return self._slot_forward(idx, cache)
        start = cache.pos if cache is not None else 0
        limit = cache.capacity if cache is not None else self.config.max_seq_len
        if start + T > limit:
            raise ValueError(f"位置 {start} + 输入长度 {T} 超过了上限 {limit}（max_seq_len={self.config.max_seq_len}）。"
                             "请截取最后 max_seq_len 个 token（generate() 会自动这样做），或新建一个更大的缓存。")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, hd)
        x = embed(self.embed_tokens, idx)                                                  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        logits = self.lm_head(self.norm(x))                                         # (B, T, V)
        if cache is not None:
            cache.pos += T
        loss = None
        if targets is not None:
            loss = next_token_loss(logits, targets)
        return logits, loss

    def _slot_forward(self, idx: torch.Tensor, cache: SlotKVCache, step=None):
        """批量解码的一步：idx (B, 1) 是 cache.active 这 B 个槽位各自的新 token；每行的 RoPE 位置是它自己的长度。
        step：代替 decode_step 做计算的函数（编译过的 decode_step）。"""
        if idx.size(1) != 1 or idx.size(0) != cache.active.numel():
            raise ValueError(f"批量解码每步每个槽位送入 1 个 token：idx 应该是 ({cache.active.numel()}, 1)，收到 {tuple(idx.shape)}。")
        longest = int(cache.lengths[cache.active].max()) + 1            # 一次同步，本步的每一层都用它
        if longest > cache.capacity:
            raise ValueError(f"有槽位的序列已经写满了 {cache.capacity} 个位置：请先结束它。")
        if not cache.static:
            cache.span = longest
        logits = (step or self.decode_step)(idx, cache)
        cache.lengths[cache.active] += 1
        return logits, None

    def decode_step(self, idx: torch.Tensor, cache: SlotKVCache) -> torch.Tensor:
        """批量解码一步的纯计算（没有检查、没有 Python 端的同步）：idx (B, 1) → logits (B, 1, V)，并把新的 k、v
        写进缓存。generate.compiled_step 用 torch.compile 编译的就是它（配合 static=True 的缓存，形状每步都一样）。"""
        pos = cache.lengths[cache.active]
        cos, sin = self.rope_cos[pos][:, None, None, :], self.rope_sin[pos][:, None, None, :]   # (B, 1, 1, hd)
        x = embed(self.embed_tokens, idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        return self.lm_head(self.norm(x))

    # ------------------------------------------------------------ 生成
    def stream(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               seed: int | None = None, *, top_p: float | None = None, repetition_penalty: float = 1.0,
               stop_ids=None, use_cache: bool = True, compile: bool = False) -> Iterator[int]:
        """流式生成：每算出一个新 token 就 yield 它的 id（int），适合边生成边打印。

        - idx：一条提示，list[int]、一维张量或 (1, T) 张量；不能为空。
        - temperature ≤ 0 表示贪心（greedy）；top_k、top_p、repetition_penalty 的含义见 generate.Sampling。
        - stop_ids：遇到其中任何一个 token 就停（这个 token 也会 yield 出来）。
        - seed：固定后结果可复现（用独立的 torch.Generator，不影响全局随机状态）。
        - compile=True：每步的计算用 torch.compile 编译（第一次调用要编译几十秒，之后每个 token 快得多；token 相同）。
        - 上下文窗口：模型只看最后 max_seq_len 个 token。提示更长时只保留最后 max_seq_len 个；
          生成到窗口满了以后，每步对最后 max_seq_len 个 token 整段重算（不再用缓存，变慢，
          但结果与 use_cache=False 完全一致，和 GPT.generate 的截断规则相同）。
        循环本身是所有模型共用的 course_lib.generate.decode（预填充 + 每步一个 token 的 KV 缓存）。
        """
        return stream(self, idx, max_new_tokens, temperature, top_k, seed, top_p=top_p,
                      repetition_penalty=repetition_penalty, stop_ids=stop_ids, use_cache=use_cache, compile=compile)

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None, *, top_p: float | None = None, repetition_penalty: float = 1.0,
                 stop_ids=None, use_cache: bool = True) -> torch.Tensor:
        """生成并返回「提示 + 新 token」：一维输入返回一维张量，(1, T) 输入返回 (1, T + n)。

        前五个参数的顺序与 GPT.generate 相同。n ≤ max_new_tokens：遇到 stop_ids 会提前停
        （停止 token 包含在结果里）。其余参数见 stream()。一次只生成一条；要多条，请循环调用。
        """
        out = list(self.stream(idx, max_new_tokens, temperature, top_k, seed, top_p=top_p,
                               repetition_penalty=repetition_penalty, stop_ids=stop_ids, use_cache=use_cache))
        prompt = idx if torch.is_tensor(idx) else torch.tensor(idx, dtype=torch.long)
        new = torch.tensor(out, dtype=prompt.dtype, device=prompt.device)
        return torch.cat([prompt, new.view(*prompt.shape[:-1], -1)], dim=-1)
