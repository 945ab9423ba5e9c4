"""从语言模型生成文字：采样设置（Sampling）、每一步怎么选下一个 token（sample_next），以及课程唯一的解码循环（decode）。

sample_next 的处理顺序与 Hugging Face 相同：重复惩罚 → 温度 → top-k → top-p → 按概率抽一个
（process_logits 做前四步，sampling_probs 给出最后抽样用的分布，第 09 章把它画成柱状图）。

decode 是所有模型共用的生成循环：BigramLM、GPT、Llama（带 KV 缓存）、量化后的模型、transformers 的模型
（经 course_lib.hf_adapter.HFCausalLM）、第 06 章的评测和第 09 章的 ChatSession 都走它。规则只有几条：
1. 预填充（prefill）：提示只保留最后 window 个 token（模型的上下文窗口），一次算完；
2. 之后每步只送入 1 个新 token（模型有 new_cache() 时用 KV 缓存；没有时对最后 window 个 token 整段重算）；
   缓存写满了窗口以后，同样改为整段重算——结果与不用缓存完全一致；
3. 采样看到的「历史」（重复惩罚用）是完整的提示 + 已生成的 token；生成到 stop_ids 里的 token 就停。
StreamDecoder 把一个个 token 变成流式输出的文字，保证不会把一个多字节的字劈成两半（第 09 章）。

BatchDecoder 是同一个循环拆成两步的版本：几条序列拼成一批解码（第 11 章的服务器）。compile=True 时每步的计算
（Llama.decode_step）用 torch.compile 编译，KV 缓存预先分配成固定的大小（static）；decode 的 compile=True 就是
用一个槽位的 BatchDecoder 来生成。编译不了（没有 C 编译器、平台不支持）时退回不编译，结果完全相同。
"""
from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import bad_input, check_int, token_ids
from .device import eval_mode


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not (isinstance(x, float) and math.isnan(x))


@dataclass(frozen=True)
class Sampling:
    """采样设置，所有参数都在这里检查一次（不合法时给出中文错误）。

    - temperature ≤ 0 表示贪心（greedy）：每步取分数最大的 token，结果确定，top_k、top_p 不起作用；
      < 1 让分布更尖，> 1 更平。
    - top_k：只在概率最大的 k 个 token 里采样（None = 不用）。
    - top_p：只在累计概率达到 top_p 的最小 token 集合里采样，必须在 (0, 1] 之间（None 或 1 = 不用）。
    - repetition_penalty：> 1 时压低已经出现过的 token；1 = 不用。
    """
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not _is_number(self.temperature):
            raise ValueError(f"temperature 必须是数字，收到 {self.temperature!r}。常用 0.7；≤ 0 表示贪心（每步取概率最大的 token）。")
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1):
            raise ValueError(f"top_k 必须是 ≥ 1 的整数（或 None 表示不用），收到 {self.top_k!r}。常用 50。")
        if self.top_p is not None and not (_is_number(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p 必须在 (0, 1] 之间，收到 {self.top_p!r}。常用 0.9；1.0 或 None 表示不用 top-p。")
        if not (_is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty 必须 > 0，收到 {self.repetition_penalty!r}。常用 1.1；1.0 表示不惩罚。")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


GREEDY = Sampling(temperature=0.0)


def make_generator(seed: int | None) -> torch.Generator | None:
    """seed 不是 None 时返回一个独立的 CPU 随机数发生器：采样可复现，且不影响全局随机状态。"""
    return None if check_int(seed, "seed", None, allow_none=True) is None else torch.Generator(device="cpu").manual_seed(seed)


def prompt_ids(idx) -> list[int]:
    """把一条提示（list[int]、一维张量或 (1, T) 张量）变成 list[int]；空提示或多条时给出中文错误。"""
    if torch.is_tensor(idx):
        if idx.dim() == 2:
            if idx.size(0) != 1:
                raise ValueError(f"一次只能生成一条，收到 {idx.size(0)} 条提示（形状 {tuple(idx.shape)}）。"
                                 "请循环调用，每次传一条 (1, T) 或一维的提示。")
            idx = idx[0]
    ids = token_ids(idx, "提示（prompt）")
    if not ids:
        raise ValueError("提示（prompt）是空的：至少给一个 token 作为开头（例如 BOS 的 id）。")
    return ids


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """重复惩罚（CTRL 论文的做法）：已经出现过的 token，正的 logit 除以 penalty、负的乘以 penalty。

    penalty > 1 让出现过的 token 变得不那么可能；= 1 不变。logits: (B, V)，prev_ids: (B, T)。
    """
    score = logits.gather(-1, prev_ids)
    score = torch.where(score > 0, score / penalty, score * penalty)
    return logits.scatter(-1, prev_ids, score)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """核采样（nucleus / top-p）：按概率从大到小，保留累计概率刚达到 top_p 的最少几个 token，其余设为 -inf。

    至少保留概率最大的那个 token。top_p = 1 时什么都不去掉。
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs          # 排在它前面的 token 的累计概率
    remove_sorted = before >= top_p                # 前面的已经够 top_p 了，它就不要了
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float = 1.0,
                   prev_ids: torch.Tensor | None = None) -> torch.Tensor:
    """把 logits (B, V) 依次做重复惩罚 → 温度 → top-k → top-p，返回处理后的 logits（被去掉的 token 是 -inf）。

    temperature ≤ 0（贪心）时只做重复惩罚：之后直接取 argmax，温度、top-k、top-p 都不起作用。
    第 09 章用它（经过 sampling_probs）画出每一步处理后的分布。
    """
    Sampling(temperature, top_k, top_p, repetition_penalty)  # 参数检查只在 Sampling 里写一次
    if repetition_penalty != 1.0 and prev_ids is not None and prev_ids.numel() > 0:
        logits = apply_repetition_penalty(logits, prev_ids.to(logits.device), repetition_penalty)
    if temperature <= 0:
        return logits
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float = 1.0,
                   prev_ids: torch.Tensor | None = None) -> torch.Tensor:
    """sample_next 实际从中抽样的概率分布 (B, V)；贪心（temperature ≤ 0）时是 argmax 处为 1 的独热分布。"""
    logits = process_logits(logits, temperature, top_k, top_p, repetition_penalty, prev_ids)
    if temperature <= 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    return F.softmax(logits, dim=-1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, prev_ids: torch.Tensor | None = None) -> torch.Tensor:
    """logits: (B, V) → 下一个 token 的 id，形状 (B, 1)。

    - temperature ≤ 0 表示贪心（greedy）：直接取（重复惩罚之后）分数最大的 token，结果确定；
      top_k、top_p 这时不起作用。temperature < 1 让分布更尖，> 1 更平。
    - top_k：只在概率最大的 k 个 token 里采样。
    - top_p：只在累计概率达到 top_p 的最小 token 集合里采样，必须在 (0, 1] 之间；None 或 1 表示不用。
    - repetition_penalty：> 1 时压低 prev_ids (B, T) 里出现过的 token；1 表示不用。
    - generator：传入 torch.Generator 即可让采样可复现（不影响全局随机状态）。
    """
    try:
        scores = process_logits(logits, temperature, top_k, top_p, repetition_penalty, prev_ids)
        if temperature <= 0:
            return scores.argmax(dim=-1, keepdim=True)
        probs = F.softmax(scores, dim=-1)
        if generator is not None and generator.device != probs.device:
            probs = probs.to(generator.device)
        return torch.multinomial(probs, num_samples=1, generator=generator).to(scores.device)
    except (AttributeError, TypeError, RuntimeError, IndexError):  # 只在出错时才找原因，正常采样没有额外开销
        problem = _sampling_problem(logits, prev_ids, generator)
        if problem is None:
            raise
        raise ValueError(problem) from None


def _sampling_problem(logits, prev_ids, generator) -> str | None:
    """sample_next 出错时，用中文说明是哪个参数不对；找不出原因时返回 None（原样抛出 PyTorch 的错误）。"""
    if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.dim() != 2:
        return f"logits 应该是 (B, V) 的浮点张量（模型输出 logits[:, -1, :]），收到 {type(logits).__name__}。"
    if prev_ids is not None and (not torch.is_tensor(prev_ids) or prev_ids.is_floating_point()):
        return f"prev_ids 应该是 (B, T) 的整数张量（已经出现过的 token），收到 {type(prev_ids).__name__}。"
    if prev_ids is not None and prev_ids.numel() and not 0 <= int(prev_ids.min()) <= int(prev_ids.max()) < logits.size(-1):
        return f"prev_ids 里有 id 超出了 logits 的词表大小 {logits.size(-1)}：它们和 logits 不是同一个模型的。"
    if generator is not None and not isinstance(generator, torch.Generator):
        return f"generator 应该是 torch.Generator（或 None），收到 {type(generator).__name__}。固定随机性也可以直接传 seed=。"
    if not torch.isfinite(logits).any(dim=-1).all() or torch.isnan(logits).any():
        return ("logits 里有 NaN（或者整行都是 -inf），没法按概率抽样。多半是模型训练发散了（损失变成了 nan）："
                "请调小学习率、打开梯度裁剪后重新训练。")
    return None


class StreamDecoder:
    """流式解码（incremental detokenization）：一个一个地收 token id，吐出「已经确定」的新文字。

    难点在字节回退（byte fallback）：一个生僻字或 emoji 被拆成 2–4 个字节 token，只收到前几个字节时，
    解码出来是替换字符「�」（U+FFFD）。规则很简单：每次把到目前为止的全部 id 一起解码，末尾的「�」先扣住
    不发，等后面的字节到齐、变成完整的字再一起发出。所以一个字的几个字节 token 总是一起出现，
    永远不会把一个多字节字符劈成两半。真正无效的字节（模型乱生成的）在后面跟上正常文字后，照样以「�」发出
    （按替换规则解码，不会报错）；finish() 发出最后扣住的部分。

    decode 可以是任何「id 列表 → 文本」的函数：BPETokenizer.decode、Hugging Face 分词器的 decode 都行。
    每步都从头解码，代价随回复长度平方增长；回复只有几百个 token，这点开销可以忽略。

    >>> dec = StreamDecoder(tok.decode)
    >>> pieces = [dec.push(i) for i in ids] + [dec.finish()]
    >>> "".join(pieces) == tok.decode(ids)
    True
    """

    def __init__(self, decode):
        if not callable(decode):
            raise TypeError(f"StreamDecoder 需要一个「id 列表 → 文本」的函数，例如 tokenizer.decode，收到 {type(decode).__name__}。")
        self.decode = decode
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """收下一个 token，返回这一步新确定的文字（可能是空字符串：字节还没到齐）。"""
        try:
            self.ids.append(int(token_id))
        except (TypeError, ValueError):
            raise ValueError(f"push 要的是一个 token id（整数），收到 {type(token_id).__name__} {token_id!r:.30}。") from None
        stable = self.decode(self.ids).rstrip("\ufffd")
        if len(stable) <= len(self.emitted):
            return ""
        piece, self.emitted = stable[len(self.emitted):], stable
        return piece

    def finish(self) -> str:
        """生成结束：把扣住的结尾（不完整的字节，按替换规则变成「�」）也发出来。"""
        text = self.decode(self.ids) if self.ids else ""
        piece = text[len(self.emitted):]
        self.emitted = text if len(text) > len(self.emitted) else self.emitted
        return piece

    @property
    def text(self) -> str:
        """到目前为止发出的全部文字。"""
        return self.emitted


def check_max_new_tokens(max_new_tokens) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens 必须是 ≥ 1 的整数，收到 {max_new_tokens!r}。")


def model_window(model) -> int | None:
    """模型的上下文窗口（最多看多少个 token）：Llama 的 max_seq_len、GPT 的 block_size、
    transformers 模型的 max_position_embeddings；不知道时返回 None（不截断）。"""
    cfg = getattr(model, "config", None) or getattr(getattr(model, "hf", None), "config", None)
    for name in ("max_seq_len", "block_size", "max_position_embeddings"):
        if isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    return None


def _logits(out) -> torch.Tensor:
    """模型输出 → logits：course_lib 的模型返回 (logits, loss)，transformers 返回带 .logits 的对象。"""
    if isinstance(out, tuple):
        return out[0]
    return getattr(out, "logits", out)


@torch.no_grad()
def decode(model, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling = GREEDY, *, seed: int | None = None,
           stop_ids=(), window: int | None = None, use_cache: bool = True,
           compile: bool = False) -> Iterator[torch.Tensor]:
    """课程唯一的解码循环：每生成一步 yield 一个 (B, 1) 的张量（这一步每条序列的新 token）。

    - idx：(B, T) 的提示；model(idx) 返回 logits 或 (logits, loss)。
    - window：上下文窗口，默认 model_window(model)；BigramLM 传 1。
    - use_cache：模型有 new_cache(batch_size, capacity) 并接受 model(idx, cache=cache) 时用 KV 缓存。
    - stop_ids：所有序列都生成过其中某个 token 后停止（停止 token 本身也会 yield）。
    - seed：固定后结果可复现（用独立的 torch.Generator，不影响全局随机状态）。
    - compile：一条序列、模型有 decode_step（Llama）、提示加生成放得进窗口时，用编译过的一步 + 固定大小的缓存
      （一个槽位的 BatchDecoder）；生成的 token 与不编译时相同。
    """
    check_max_new_tokens(max_new_tokens)
    if not torch.is_tensor(idx) or idx.dim() != 2:
        raise bad_input(idx)
    if (compile and use_cache and idx.size(0) == 1 and hasattr(model, "decode_step")
            and idx.size(1) + max_new_tokens <= model.config.max_seq_len + 1):
        dec = BatchDecoder(model, slots=1, compile=True)
        dec.add(idx[0], max_new_tokens, sampling, seed, stop_ids)
        while dec.active or dec.pending:
            for _, token, _ in dec.step():
                yield torch.tensor([[token]], device=idx.device)
        return
    window = model_window(model) if window is None else window
    generator = make_generator(seed)
    param = next(model.parameters(), None)
    if param is not None:
        idx = idx.to(param.device)  # 提示放到模型所在的设备上（GPU 上的模型也能直接用 CPU 张量做提示）
    stop_ids = token_ids([stop_ids] if isinstance(stop_ids, numbers.Integral) else stop_ids, "stop_ids")
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=idx.device) if stop_ids else None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    with eval_mode(model):
        context = idx if window is None else idx[:, -window:]
        cache = None
        if use_cache and hasattr(model, "new_cache"):
            cache = model.new_cache(idx.size(0), capacity=context.size(1) + max_new_tokens)
            logits = _logits(model(context, cache=cache))
        else:
            logits = _logits(model(context))
        for step in range(max_new_tokens):
            nxt = sample_next(logits[:, -1, :], sampling.temperature, sampling.top_k, generator, top_p=sampling.top_p,
                              repetition_penalty=sampling.repetition_penalty, prev_ids=idx)
            idx = torch.cat([idx, nxt], dim=1)
            yield nxt
            if stop is not None:
                finished |= torch.isin(nxt[:, 0], stop)
            if step == max_new_tokens - 1 or bool(finished.all()):
                return
            if cache is not None and cache.pos < cache.capacity:  # 增量：只送入新 token
                logits = _logits(model(nxt, cache=cache))
            else:                                                 # 没有缓存，或窗口写满了：整段重算
                cache = None
                logits = _logits(model(idx if window is None else idx[:, -window:]))


def stream(model, prompt, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           seed: int | None = None, *, top_p: float | None = None, repetition_penalty: float = 1.0,
           stop_ids=None, use_cache: bool = True, compile: bool = False) -> Iterator[int]:
    """一条提示的流式生成：每算出一个新 token 就 yield 它的 id（int）。Llama.stream 就是它。

    prompt：list[int]、一维张量或 (1, T) 张量，不能为空。其余参数见 Sampling 和 decode。
    参数不合法时立刻报错；提示的检查和生成在第一次取值时进行。
    """
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    check_max_new_tokens(max_new_tokens)

    def tokens():
        ids = torch.tensor([prompt_ids(prompt)], dtype=torch.long)
        for nxt in decode(model, ids, max_new_tokens, sampling, seed=seed, stop_ids=stop_ids or (), use_cache=use_cache,
                          compile=compile):
            yield int(nxt)
    return tokens()


def generate_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, seed: int | None = None,
                    block_size: int | None = None, top_p: float | None = None,
                    repetition_penalty: float = 1.0) -> torch.Tensor:
    """一次生成 max_new_tokens 个 token，返回「提示 + 新 token」：idx (B, T) → (B, T + max_new_tokens)。

    BigramLM.generate、GPT.generate 用它。不用 KV 缓存：每步把最后 block_size 个 token 整段送进模型（最简单）；
    Llama.generate 用缓存，结果与它一致。
    """
    if not torch.is_tensor(idx):
        raise bad_input(idx)
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    if idx.size(1) == 0:
        raise ValueError("提示（prompt）是空的：至少给一个 token 作为开头。")
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    param = next(model.parameters(), None)
    idx = idx.to(param.device) if param is not None else idx
    new = list(decode(model, idx, max_new_tokens, sampling, seed=seed, window=block_size, use_cache=False))
    return torch.cat([idx, *new], dim=1)


@torch.no_grad()
def generation_speed(model, prompt: list[int], new_tokens: int = 32, repeats: int = 2) -> float:
    """贪心生成 new_tokens 个 token 的速度（token/秒；计时包括读入提示的那一次前向），
    取 repeats 次里最快的一次（机器忙时更稳）。

    model：课程的 Llama（KV 缓存）、course_lib.hf_adapter.HFCausalLM，或 transformers 的因果语言模型（自动包一层）。
    第 08 章用它比较量化前后的生成速度。
    """
    from .hf_adapter import HFCausalLM
    check_int(new_tokens, "new_tokens")
    check_int(repeats, "repeats")
    if hasattr(model, "generation_config"):  # transformers 的模型
        model = HFCausalLM(model)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(1 for _ in stream(model, prompt, new_tokens, temperature=0))
        best = min(best, (time.perf_counter() - t0) / n)
    return 1.0 / best


_COMPILE_FAILED: set[str] = set()        # 编译失败过的原因：每种只提示一次


def compiled_step(model):
    """model.decode_step 编译后的版本（torch.compile，每个模型只编译一次，存在 model 上）；编译不了时返回 None。

    第一次调用时才真正编译（2 核 CPU 上要几十秒，见 docs/benchmarks.md 的解码一节），之后每步都快。
    """
    fn = model.__dict__.get("_compiled_decode_step")
    if fn is None:
        fn = torch.compile(model.decode_step, dynamic=False)
        model.__dict__["_compiled_decode_step"] = fn
    return fn


class BatchDecoder:
    """批量解码（第 11 章的服务器用它）：几条长度不同、随时加入和结束的序列共用一次前向，每条有自己的采样参数。

    和 decode 是同一个循环，只是拆成了两步：add() 预填充一条新序列（单独算它的提示，存进 SlotKVCache 的一个空槽位）
    并采样它的第一个 token；step() 把所有进行中的序列各自的上一个 token 拼成 (B, 1) 一起前向一次，每行按自己的
    Sampling 和随机数生成器采样下一个 token。贪心时每条序列的 token 与 decode / stream 单独生成的一样。

    >>> dec = BatchDecoder(model, slots=8)
    >>> h = dec.add(prompt_ids, max_new_tokens=64, sampling=GREEDY, stop_ids=[tok.im_end_id])
    >>> events = dec.step()        # [(handle, token, finished), ...]，add 时的第一个 token 也在里面
    """

    def __init__(self, model, slots: int = 8, capacity: int | None = None, compile: bool = False):
        from .llama import Llama, SlotKVCache
        if not isinstance(model, Llama):
            raise TypeError(f"BatchDecoder 需要 course_lib.Llama（用它的 KV 缓存），收到 {type(model).__name__}。")
        self.model = model.eval()
        w = model.embed_tokens.weight
        # 编译时缓存的形状固定（每步都看满 capacity 个位置，用掩码挡住没写过的）：编译一次，之后每一步都用同一份代码
        self.cache = SlotKVCache(model.config, slots, None if compile else capacity, device=w.device, dtype=w.dtype,
                                 static=compile)
        self._step = compiled_step(model) if compile else None
        self.capacity = self.cache.capacity
        self.free = list(range(slots))[::-1]
        self.seqs: dict[int, dict] = {}
        self.pending: list[tuple[int, int, bool]] = []     # add 时采样出的第一个 token，下一次 step 一起交出
        self._next_handle = 0

    @property
    def active(self) -> int:
        return len(self.seqs)

    @property
    def has_room(self) -> bool:
        return bool(self.free)

    @torch.no_grad()
    def add(self, prompt, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int | None = None,
            stop_ids=()) -> int:
        """加入一条序列，返回它的编号（handle）。提示 + max_new_tokens 超过容量时报错（调用方先截短 max_new_tokens）。"""
        check_max_new_tokens(max_new_tokens)
        ids = prompt_ids(prompt)
        if len(ids) + max_new_tokens > self.capacity + 1:
            raise ValueError(f"提示 {len(ids)} 个 token + 最多生成 {max_new_tokens} 个，超过了上下文窗口 {self.capacity}。")
        if not self.free:
            raise RuntimeError("BatchDecoder 的槽位都满了：先等一条序列结束（has_room 为 True）再加入。")
        slot = self.free.pop()
        device = self.cache.k.device
        x = torch.tensor([ids], dtype=torch.long, device=device)
        single = self.model.new_cache(1, capacity=len(ids))
        logits = _logits(self.model(x, cache=single))
        self.cache.insert(slot, single)
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        seq = {"slot": slot, "sampling": sampling, "generator": make_generator(seed), "max_new": max_new_tokens,
               "stop": set(token_ids([stop_ids] if isinstance(stop_ids, numbers.Integral) else stop_ids, "stop_ids")),
               "ids": x, "count": 0}
        self.seqs[handle] = seq
        self.pending.append(self._emit(handle, seq, logits[:, -1, :]))
        return handle

    def _emit(self, handle: int, seq: dict, logits: torch.Tensor) -> tuple[int, int, bool]:
        s = seq["sampling"]
        nxt = sample_next(logits, s.temperature, s.top_k, seq["generator"], top_p=s.top_p,
                          repetition_penalty=s.repetition_penalty, prev_ids=seq["ids"])
        seq["ids"] = torch.cat([seq["ids"], nxt], dim=1)
        seq["count"] += 1
        token = int(nxt)
        done = token in seq["stop"] or seq["count"] >= seq["max_new"] or int(self.cache.lengths[seq["slot"]]) >= self.capacity
        if done:
            self.remove(handle)
        return handle, token, done

    def _forward(self, last: torch.Tensor) -> torch.Tensor:
        if self._step is not None:
            try:
                return self.model._slot_forward(last, self.cache, self._step)[0]
            except Exception as e:  # noqa: BLE001 —— 编译失败（没有 C 编译器等）：提示一次，退回不编译，结果相同
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                if reason not in _COMPILE_FAILED:
                    _COMPILE_FAILED.add(reason)
                    import warnings
                    warnings.warn(f"torch.compile 编译解码的一步失败，改用不编译的版本（结果相同，只是慢一些）：{reason}",
                                  stacklevel=3)
                self._step = None         # 失败时缓存可能写了一半：下面整步重算，写的是同样的位置，覆盖掉就好
        return _logits(self.model(last, cache=self.cache))

    def remove(self, handle: int) -> None:
        """提前结束一条序列（例如客户端断开），释放它的槽位。不认识的 handle 什么也不做。"""
        seq = self.seqs.pop(handle, None)
        if seq is not None:
            self.free.append(seq["slot"])

    @torch.no_grad()
    def step(self) -> list[tuple[int, int, bool]]:
        """所有进行中的序列各前进一个 token；返回 [(handle, token, 是否结束)]（包括 add 之后还没交出的第一个 token）。"""
        events, self.pending = self.pending, []
        just_added = {e[0] for e in events}                 # 这一轮刚加入的序列已经有了第一个 token
        live = [(h, s) for h, s in self.seqs.items() if h not in just_added]
        if live:
            self.cache.active = torch.tensor([s["slot"] for _, s in live], device=self.cache.k.device)
            last = torch.cat([s["ids"][:, -1:] for _, s in live], dim=0)
            logits = self._forward(last)[:, -1, :]
            events += [self._emit(h, s, logits[i:i + 1]) for i, (h, s) in enumerate(live)]
        return events
