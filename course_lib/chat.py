"""第 09 章：和模型对话——多轮对话、流式输出、上下文窗口管理、notebook 聊天框和命令行聊天。

    from course_lib.chat import ChatSession
    from course_lib.chat_models import load_chat_model
    model, tok, name = load_chat_model()              # 默认：第 06 章的 SFT 模型（没有时用参考基座模型）
    chat = ChatSession(model, tok, temperature=0.7, top_p=0.9, seed=0)
    for piece in chat.stream("你好，你是谁？"):        # 流式：一段一段地拿到回复
        print(piece, end="", flush=True)
    chat.chat("“画蛇添足”是什么意思？")                 # 一次拿到整条回复；历史自动记住
    chat.reset()                                      # 清空历史（系统提示保留）

读取模型在 course_lib.chat_models（load_chat_model），notebook 聊天框和命令循环在 course_lib.chat_ui，
命令行 python -m course_lib.chat --help 在 course_lib/cli/chat.py（/reset 清空历史，/system 改系统提示，
/exit 或 Ctrl-D 退出，生成时按 Ctrl-C 只停止这一条回复）。

ChatSession 的约定（也是第 09 章「错误输入」一节测的内容）：
- 模板：第 06 章的 ChatML（course_lib.chat_format），系统提示默认是 DEFAULT_SYSTEM；生成到 <|im_end|>（或 <|endoftext|>）就停。
- 上下文窗口：提示最多占 context_length - min(max_new_tokens, context_length // 2) 个 token，剩下的留给回复。
  放不下时从最早的一轮（一问一答）开始丢，直到放得下——历史再长也不会出错；完整历史仍保存在 history 里。
  连一轮历史都不带、单独一条用户消息就超长时，只保留这条消息**最后**的部分（按字符截断到刚好放得下），
  last["truncated"] 为 True。系统提示本身太长（加上一条空的用户消息就占满提示的上限）时，设置它就报错。
- 采样：course_lib.generate.Sampling（temperature ≤ 0 表示贪心，结果确定，top_k、top_p 不起作用；top_p 必须在 (0, 1]；
  top_k ≥ 1；repetition_penalty > 0）；seed 固定时第 n 轮用 seed + n，reset() 之后从头再来一遍结果相同。
- 输入：空消息（或只有空白）报错；bytes 按 UTF-8 解码，不是合法 UTF-8 时给出中文错误。
  输出：模型生成的无效字节按替换规则解码成「�」，不会出错；流式输出永远不会把一个多字节的字劈成两半
  （course_lib.generate.StreamDecoder）。
- 流式回复被中断（Ctrl-C，或调用方提前停止迭代）时，已经生成的部分照样记入历史，last["stop"] == "interrupted"。
- last 里的停止原因 stop："stop_token"（生成了 <|im_end|> 或 <|endoftext|>，是哪一个见 stop_id）、"max_new_tokens"、
  "context_full"（窗口剩下的位置比 max_new_tokens 少，写满了窗口）、"interrupted"。
- 模型：course_lib 的 Llama + BPETokenizer；或者 transformers 的因果语言模型 + 分词器（通过 HFBackend 适配：
  有 chat_template 就用 apply_chat_template；生成是同一个 course_lib.generate.decode，所以参数含义完全相同）。
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from .chat_format import DEFAULT_SYSTEM, IM_END, encode_chat, format_chat, sanitize, validate_messages
from .checks import check_int
from .files import check_utf8, decode_utf8
from .generate import Sampling, StreamDecoder, check_max_new_tokens, stream
from .hf_adapter import HFCausalLM


# ---------------------------------------------------------------- 两种模型的适配器（只管模板和停止 token；生成都是 decode）
def _stream(model, ids, max_new_tokens: int, sampling: Sampling, seed: int | None, stop_ids) -> Iterator[int]:
    return stream(model, ids, max_new_tokens, sampling.temperature, sampling.top_k, seed, top_p=sampling.top_p,
                  repetition_penalty=sampling.repetition_penalty, stop_ids=stop_ids)


class CourseBackend:
    """course_lib 的 Llama + BPETokenizer：模板用 chat_format.encode_chat，生成用 course_lib.generate.decode（带 KV 缓存）。"""

    kind = "course_lib"

    def __init__(self, model, tokenizer):
        from .tokenizer import BPETokenizer
        if not isinstance(tokenizer, BPETokenizer):
            raise TypeError(f"course_lib 的 Llama 要配 course_lib.tokenizer.BPETokenizer（第 05 章），收到 {type(tokenizer).__name__}。"
                            "对话模板需要 <|im_start|>、<|im_end|> 这两个特殊 token，字符级分词器没有。")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"分词器有 {tokenizer.vocab_size} 个 token，模型的 vocab_size 只有 {model.config.vocab_size}："
                             "它们不是一起训练的。请用同一个文件夹里的模型和分词器。")
        self.model, self.tokenizer = model, tokenizer
        self.context_length = model.config.max_seq_len
        self.stop_ids = {tokenizer.im_end_id, tokenizer.eos_id}

    def encode_chat(self, messages) -> list[int]:
        return encode_chat(messages, self.tokenizer, add_generation_prompt=True)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def stream(self, ids, max_new_tokens: int, seed: int | None, sampling: Sampling) -> Iterator[int]:
        return _stream(self.model, ids, max_new_tokens, sampling, seed, self.stop_ids)


class HFBackend:
    """transformers 的模型 + 分词器（导出的课程模型，或联网下载的 Qwen2.5-0.5B-Instruct 等）。

    - 模板：分词器带 chat_template 时用 apply_chat_template（课程导出的模型带的就是 chat_format.CHAT_TEMPLATE，
      id 与 encode_chat 完全相同）；没有模板时用课程的 ChatML 文本，开头补 bos。
    - 生成：课程共用的 course_lib.generate.decode，经 course_lib.hf_adapter.HFCausalLM 用 transformers 的 KV 缓存
      （past_key_values），每步仍用 sample_next 采样。
    - 停止：<|im_end|>（词表里有的话）、分词器和 generation_config 里的 eos。
    """

    kind = "transformers"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.lm = model, tokenizer, HFCausalLM(model)
        self.context_length = int(getattr(model.config, "max_position_embeddings", None) or 2048)
        stop = set()
        generation_config = getattr(model, "generation_config", None)
        for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
            stop.update(value if isinstance(value, (list, tuple)) else [value])
        if IM_END in tokenizer.get_vocab():
            stop.add(tokenizer.convert_tokens_to_ids(IM_END))
        self.stop_ids = {int(i) for i in stop if i is not None}
        if not self.stop_ids:
            raise ValueError("这个分词器既没有 eos_token，也没有 <|im_end|>：生成永远不会自己停。"
                             "请在 generation_config.json 里写上 eos_token_id。")

    def encode_chat(self, messages) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            # 别人的模板（如 Qwen）不会替换内容里的 "<|im_end|>" 这类字符串：先用课程的 sanitize 防提示注入
            messages = [{"role": m["role"], "content": sanitize(m["content"])} for m in messages]
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out   # transformers 5 返回 BatchEncoding
            return [int(i) for i in ids]
        ids = self.tokenizer.encode(format_chat(messages, add_generation_prompt=True), add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + list(ids)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def stream(self, ids, max_new_tokens: int, seed: int | None, sampling: Sampling) -> Iterator[int]:
        return _stream(self.lm, ids, max_new_tokens, sampling, seed, self.stop_ids)


def make_backend(model, tokenizer):
    """按模型的类型选适配器：course_lib 的 Llama → CourseBackend；transformers 的模型 → HFBackend。"""
    from .gpt import GPT
    from .llama import Llama
    if isinstance(model, Llama):
        return CourseBackend(model, tokenizer)
    if isinstance(model, GPT):
        raise TypeError("第 03 章的 GPT 是字符级模型，没有对话模板要用的特殊 token，不能用来对话。"
                        "请用第 05 章起的 Llama + BPETokenizer（例如 course_lib.reference.load_reference()）。")
    if hasattr(model, "generation_config") and hasattr(tokenizer, "apply_chat_template"):
        return HFBackend(model, tokenizer)
    raise TypeError(f"ChatSession 不认识 {type(model).__name__} + {type(tokenizer).__name__}："
                    "支持 course_lib 的 Llama + BPETokenizer，或 transformers 的模型 + 分词器。")


# ---------------------------------------------------------------- 输入
def as_text(message, what: str = "消息") -> str:
    """用户输入 → str：bytes 按 UTF-8 解码（不合法时报中文错误）；空消息报错。"""
    if isinstance(message, (bytes, bytearray)):
        message = decode_utf8(bytes(message), source=what)
    if not isinstance(message, str):
        raise TypeError(f"{what}必须是字符串（或 UTF-8 编码的 bytes），收到 {type(message).__name__}。")
    check_utf8(message, source=what)  # 终端不是 UTF-8 时，坏字节会变成落单的代理字符
    if not message.strip():
        raise ValueError(f"{what}是空的：请输入一些文字再发送。")
    return message


# ---------------------------------------------------------------- 多轮对话
class ChatSession:
    """一段多轮对话：记住历史，套对话模板，管理上下文窗口，流式生成回复。约定见本模块开头的说明。

    - model, tokenizer：course_lib 的 Llama + BPETokenizer，或 transformers 的模型 + 分词器。
    - system：系统提示（system prompt）；None 或 "" 表示不用。
    - temperature / top_k / top_p / repetition_penalty：采样参数（见 course_lib.generate.sample_next）。
    - max_new_tokens：每条回复最多几个 token；context_length：上下文窗口（默认是模型的最大长度，只能更小）。
    - seed：None 表示每次都随机；给定整数时整段对话可复现。
    """

    def __init__(self, model, tokenizer, system: str | None = DEFAULT_SYSTEM, *, temperature: float = 0.7,
                 top_k: int | None = None, top_p: float | None = 0.9, repetition_penalty: float = 1.1,
                 max_new_tokens: int = 128, seed: int | None = None, context_length: int | None = None):
        self.backend = make_backend(model, tokenizer)
        limit = self.backend.context_length
        if context_length is not None and (not isinstance(context_length, int) or not 8 <= context_length <= limit):
            raise ValueError(f"context_length 必须是 8 到 {limit}（模型的最大长度）之间的整数，收到 {context_length!r}。")
        self.context_length = context_length or limit
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.repetition_penalty, self.max_new_tokens = repetition_penalty, max_new_tokens
        self.seed = check_int(seed, "seed", None, allow_none=True)
        self.sampling  # 采样参数不合法时立刻报中文错误（检查在 generate.Sampling 里）
        self.history: list[dict] = []   # user / assistant 交替的完整历史（不含系统提示）
        self.turns = 0                  # 已经生成了几条回复（seed 固定时第 n 条用 seed + n）
        self.last: dict = {}            # 最近一条回复的统计：提示长度、丢掉几轮、token 数、速度、停止原因……
        self.system = None
        self.set_system(system)

    # ------------------------------------------------------------ 设置
    @property
    def sampling(self) -> Sampling:
        """当前的采样设置（每次都按属性重新生成并检查：在 notebook 里改 chat.temperature 也会生效）。"""
        check_max_new_tokens(self.max_new_tokens)
        return Sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)

    @property
    def prompt_budget(self) -> int:
        """提示最多能占的 token 数：窗口减去留给回复的 min(max_new_tokens, 窗口的一半)。"""
        return self.context_length - min(self.max_new_tokens, self.context_length // 2)

    def set_system(self, system: str | None) -> None:
        """换系统提示（历史保留）。None 或 "" 表示不用系统提示。太长（加上一条空的用户消息就占满提示的上限）时报错。"""
        if system is not None and not isinstance(system, str):
            raise TypeError(f"系统提示必须是字符串（或 None），收到 {type(system).__name__}。")
        if system:
            check_utf8(system, source="系统提示")
        old, self.system = self.system, (system or None)
        n = len(self._encode([], ""))
        if n >= self.prompt_budget:
            self.system = old
            raise ValueError(f"系统提示太长：加上一条空的用户消息就要 {n} 个 token，提示的上限只有 {self.prompt_budget}"
                             f"（上下文窗口 {self.context_length}，其中 {self.context_length - self.prompt_budget} 个留给回复）。"
                             "请缩短系统提示，或调小 max_new_tokens。")

    def reset(self) -> None:
        """清空对话历史（系统提示和采样参数不变）；seed 固定时，之后的回复与新建的会话完全相同。"""
        self.history, self.turns, self.last = [], 0, {}

    @property
    def messages(self) -> list[dict]:
        """完整的对话（系统提示 + 历史），可以直接交给 format_chat。"""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    # ------------------------------------------------------------ 拼提示
    def _encode(self, history: list[dict], user: str) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        messages = head + history + [{"role": "user", "content": user}]
        validate_messages(messages, add_generation_prompt=True)
        return self.backend.encode_chat(messages)

    def build_prompt(self, user: str) -> tuple[list[int], dict]:
        """拼出这一轮的提示 id，保证不超过 prompt_budget。返回 (ids, 信息)。

        先带上全部历史；放不下就用二分查找，找出能放下的最近的 k 轮（丢掉最早的那些轮）。
        一轮历史都不带还放不下，就只保留用户消息最后的 L 个字（同样二分查找最大的 L）。
        """
        budget, history = self.prompt_budget, self.history
        n_turns = len(history) // 2
        fits = {}

        def ids_with(k: int, text: str = user) -> list[int]:
            return self._encode(history[len(history) - 2 * k:] if k else [], text)

        # 每轮至少占好几个 token，所以最多只有 budget // 2 轮可能放得下：更早的不必试
        lo, hi = 0, min(n_turns, budget // 2)
        ids = ids_with(hi)
        if len(ids) > budget:                     # 二分查找：能放下的最大 k（k 越大提示越长）
            ids = None
            while lo < hi:
                mid = (lo + hi + 1) // 2
                fits[mid] = ids_with(mid)
                if len(fits[mid]) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            kept = lo
            ids = fits.get(kept) or ids_with(kept)
        else:
            kept = hi
        info = {"kept_turns": kept, "dropped_turns": n_turns - kept, "truncated": False}
        if len(ids) > budget:                     # 单独一条用户消息就放不下：保留它最后的部分
            lo, hi = 0, len(user) - 1             # set_system 保证了空消息一定放得下
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(ids_with(0, user[len(user) - mid:])) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            ids = ids_with(0, user[len(user) - lo:])
            info.update(truncated=True, kept_chars=lo)
        return ids, info

    # ------------------------------------------------------------ 生成
    def stream(self, message) -> Iterator[str]:
        """发送一条用户消息，返回回复的流式文字片段（生成器）。消息不合法时立刻报错（不等到开始迭代）。"""
        text = as_text(message, "用户消息")
        sampling = self.sampling
        ids, info = self.build_prompt(text)
        max_new = min(self.max_new_tokens, self.context_length - len(ids))
        seed = None if self.seed is None else self.seed + self.turns
        self.turns += 1
        return self._reply(text, ids, max_new, seed, sampling, info)

    def _reply(self, text: str, ids: list[int], max_new: int, seed: int | None, sampling: Sampling,
               info: dict) -> Iterator[str]:
        backend = self.backend
        decoder = StreamDecoder(backend.decode)
        reply_ids: list[int] = []
        stop, stop_id = ("max_new_tokens" if max_new == self.max_new_tokens else "context_full"), None
        tokens = backend.stream(ids, max_new, seed, sampling)
        t0 = time.perf_counter()
        try:
            for token in tokens:
                if token in backend.stop_ids:     # <|im_end|>：回复写完了（停止 token 本身不输出）
                    stop, stop_id = "stop_token", token
                    break
                reply_ids.append(token)
                piece = decoder.push(token)
                if piece:
                    yield piece
            tail = decoder.finish()
            if tail:
                yield tail
        except BaseException:                     # Ctrl-C（KeyboardInterrupt）或调用方提前 close()
            stop = "interrupted"
            raise
        finally:
            tokens.close()
            seconds = time.perf_counter() - t0
            reply = backend.decode(reply_ids) if reply_ids else ""
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            n_new = len(reply_ids) + (stop == "stop_token")
            self.last = {**info, "prompt_tokens": len(ids), "new_tokens": n_new, "seconds": seconds,
                         "tokens_per_sec": n_new / seconds if seconds > 0 else float("nan"), "stop": stop, "stop_id": stop_id,
                         "reply": reply}

    def chat(self, message) -> str:
        """发送一条用户消息，返回完整的回复（内部就是把 stream 的片段拼起来）。"""
        return "".join(self.stream(message))

    def __repr__(self) -> str:
        return (f"ChatSession({self.backend.kind}, 历史 {len(self.history) // 2} 轮, 窗口 {self.context_length}, "
                f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
                f"repetition_penalty={self.repetition_penalty}, max_new_tokens={self.max_new_tokens})")


if __name__ == "__main__":  # python -m course_lib.chat：命令行在 course_lib/cli/chat.py
    from course_lib.cli.chat import main
    raise SystemExit(main())
