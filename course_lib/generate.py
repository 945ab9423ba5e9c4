"""从语言模型采样（sampling）。所有模型（BigramLM、GPT、第 04 章的 Llama）共用这里的函数。

sample_next 的处理顺序与 Hugging Face 相同：重复惩罚 → 温度 → top-k → top-p → 按概率抽一个
（process_logits 做前四步，sampling_probs 给出最后抽样用的分布，第 09 章把它画成柱状图）。
StreamDecoder 把一个个 token 变成流式输出的文字，保证不会把一个多字节的字劈成两半（第 09 章）。
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def make_generator(seed: int | None) -> torch.Generator | None:
    """seed 不是 None 时返回一个独立的 CPU 随机数发生器：采样可复现，且不影响全局随机状态。"""
    return None if seed is None else torch.Generator(device="cpu").manual_seed(seed)


def prompt_ids(idx) -> list[int]:
    """把一条提示（list[int]、一维张量或 (1, T) 张量）变成 list[int]；空提示或多条时给出中文错误。"""
    if torch.is_tensor(idx):
        if idx.dim() == 2:
            if idx.size(0) != 1:
                raise ValueError(f"一次只能生成一条，收到 {idx.size(0)} 条提示（形状 {tuple(idx.shape)}）。"
                                 "请循环调用，每次传一条 (1, T) 或一维的提示。")
            idx = idx[0]
        idx = idx.tolist()
    ids = [int(i) for i in idx]
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


def _check_sampling_args(top_p: float | None, repetition_penalty: float) -> None:
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p 必须在 (0, 1] 之间，收到 {top_p}。常用 0.9；不想用 top-p 就传 None 或 1.0。")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty 必须 > 0，收到 {repetition_penalty}。常用 1.1；1.0 表示不惩罚。")


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float = 1.0,
                   prev_ids: torch.Tensor | None = None) -> torch.Tensor:
    """把 logits (B, V) 依次做重复惩罚 → 温度 → top-k → top-p，返回处理后的 logits（被去掉的 token 是 -inf）。

    temperature ≤ 0（贪心）时只做重复惩罚：之后直接取 argmax，温度、top-k、top-p 都不起作用。
    第 09 章用它（经过 sampling_probs）画出每一步处理后的分布。
    """
    _check_sampling_args(top_p, repetition_penalty)
    if repetition_penalty != 1.0 and prev_ids is not None and prev_ids.numel() > 0:
        logits = apply_repetition_penalty(logits, prev_ids.to(logits.device), repetition_penalty)
    if temperature <= 0:
        return logits
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k 必须 ≥ 1，收到 {top_k}。")
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
    logits = process_logits(logits, temperature, top_k, top_p, repetition_penalty, prev_ids)
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, num_samples=1, generator=generator).to(logits.device)


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
        self.decode = decode
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """收下一个 token，返回这一步新确定的文字（可能是空字符串：字节还没到齐）。"""
        self.ids.append(int(token_id))
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


@torch.no_grad()
def generate_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, seed: int | None = None,
                    block_size: int | None = None, top_p: float | None = None,
                    repetition_penalty: float = 1.0) -> torch.Tensor:
    """自回归生成：每次把（最后 block_size 个）token 整段送进模型，取最后一个位置的 logits 采样。

    model(idx) 要返回 (logits, loss) 或 logits；idx: (B, T) → 返回 (B, T + max_new_tokens)。
    不用 KV 缓存，最简单也最慢；Llama.generate 用缓存，结果与它一致。
    """
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    if idx.size(1) == 0:
        raise ValueError("提示（prompt）是空的：至少给一个 token 作为开头。")
    param = next(model.parameters(), None)
    if param is not None:
        idx = idx.to(param.device)  # 提示放到模型所在的设备上（GPU 上训练的模型也能直接用 CPU 张量做提示）
    generator = make_generator(seed)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        ctx = idx if block_size is None else idx[:, -block_size:]
        out = model(ctx)
        logits = out[0] if isinstance(out, tuple) else out
        nxt = sample_next(logits[:, -1, :], temperature, top_k, generator, top_p=top_p,
                          repetition_penalty=repetition_penalty, prev_ids=idx)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return idx
