"""第 09 章：和模型对话——多轮对话、流式输出、上下文窗口管理、notebook 聊天框和命令行聊天。

    from course_lib.chat import ChatSession, load_chat_model
    model, tok, name = load_chat_model()              # 默认：第 06 章的 SFT 模型（没有时用参考基座模型）
    chat = ChatSession(model, tok, temperature=0.7, top_p=0.9, seed=0)
    for piece in chat.stream("你好，你是谁？"):        # 流式：一段一段地拿到回复
        print(piece, end="", flush=True)
    chat.chat("“画蛇添足”是什么意思？")                 # 一次拿到整条回复；历史自动记住
    chat.reset()                                      # 清空历史（系统提示保留）

命令行：python -m course_lib.chat --help（/reset 清空历史，/system 改系统提示，/exit 或 Ctrl-D 退出，
生成时按 Ctrl-C 只停止这一条回复）。

ChatSession 的约定（也是第 09 章「错误输入」一节测的内容）：
- 模板：第 06 章的 ChatML（course_lib.chat_format），系统提示默认是 DEFAULT_SYSTEM；生成到 <|im_end|>（或 <|endoftext|>）就停。
- 上下文窗口：提示最多占 context_length - min(max_new_tokens, context_length // 2) 个 token，剩下的留给回复。
  放不下时从最早的一轮（一问一答）开始丢，直到放得下——历史再长也不会出错；完整历史仍保存在 history 里。
  连一轮历史都不带、单独一条用户消息就超长时，只保留这条消息**最后**的部分（按字符截断到刚好放得下），
  last["truncated"] 为 True。系统提示本身太长（加上一条空的用户消息就占满提示的上限）时，设置它就报错。
- 采样：temperature ≤ 0 表示贪心（greedy，结果确定，top_k、top_p 不起作用）；top_p 必须在 (0, 1]；
  top_k ≥ 1；repetition_penalty > 0；seed 固定时第 n 轮用 seed + n，reset() 之后从头再来一遍结果相同。
- 输入：空消息（或只有空白）报错；bytes 按 UTF-8 解码，不是合法 UTF-8 时给出中文错误。
  输出：模型生成的无效字节按替换规则解码成「�」，不会出错；流式输出永远不会把一个多字节的字劈成两半
  （course_lib.generate.StreamDecoder）。
- 流式回复被中断（Ctrl-C，或调用方提前停止迭代）时，已经生成的部分照样记入历史，last["stop"] == "interrupted"。
- last 里的停止原因 stop："stop_token"（生成了 <|im_end|> 或 <|endoftext|>，是哪一个见 stop_id）、"max_new_tokens"、
  "context_full"（窗口剩下的位置比 max_new_tokens 少，写满了窗口）、"interrupted"。
- 模型：course_lib 的 Llama + BPETokenizer；或者 transformers 的因果语言模型 + 分词器（通过 HFBackend 适配：
  有 chat_template 就用 apply_chat_template，采样仍用 course_lib.generate.sample_next，所以参数含义完全相同）。
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .chat_format import DEFAULT_SYSTEM, IM_END, encode_chat, format_chat, sanitize, validate_messages
from .files import decode_utf8, read_text_utf8
from .generate import StreamDecoder, make_generator, sample_next

# 非交互运行（nbrun / nbval / CI）时 chat_ui 演示的几轮对话
DEMO_MESSAGES = ("你好，你是谁？", "「画蛇添足」是什么意思？", "计算：27+15=？")
ASSISTANT_NAME = "小雁"


# ---------------------------------------------------------------- 两种模型的适配器
class CourseBackend:
    """course_lib 的 Llama + BPETokenizer：模板用 chat_format.encode_chat，生成用 Llama.stream（带 KV 缓存）。"""

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

    def stream(self, ids, max_new_tokens: int, seed: int | None, **sampling) -> Iterator[int]:
        return self.model.stream(ids, max_new_tokens, sampling["temperature"], sampling["top_k"], seed,
                                 top_p=sampling["top_p"], repetition_penalty=sampling["repetition_penalty"],
                                 stop_ids=self.stop_ids)


class HFBackend:
    """transformers 的模型 + 分词器（导出的课程模型，或联网下载的 Qwen2.5-0.5B-Instruct 等）。

    - 模板：分词器带 chat_template 时用 apply_chat_template（课程导出的模型带的就是 chat_format.CHAT_TEMPLATE，
      id 与 encode_chat 完全相同）；没有模板时用课程的 ChatML 文本，开头补 bos。
    - 生成：自己写的循环，用 transformers 的 KV 缓存（past_key_values），每步用 sample_next 采样。
    - 停止：<|im_end|>（词表里有的话）、分词器和 generation_config 里的 eos。
    """

    kind = "transformers"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
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

    @torch.no_grad()
    def stream(self, ids, max_new_tokens: int, seed: int | None, **sampling) -> Iterator[int]:
        model = self.model
        device = next(model.parameters()).device
        generator = make_generator(seed)
        tokens = [int(i) for i in ids]
        was_training = model.training
        model.eval()
        try:
            inputs, past = torch.tensor([tokens], device=device), None
            for _ in range(max_new_tokens):
                out = model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values                                  # 缓存里多了这几个位置的 k、v
                nxt = int(sample_next(out.logits[:, -1, :], sampling["temperature"], sampling["top_k"], generator,
                                      top_p=sampling["top_p"], repetition_penalty=sampling["repetition_penalty"],
                                      prev_ids=torch.tensor([tokens], device=device)))
                tokens.append(nxt)
                yield nxt
                if nxt in self.stop_ids:
                    return
                inputs = torch.tensor([[nxt]], device=device)               # 之后每步只送入 1 个新 token
        finally:
            model.train(was_training)


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


# ---------------------------------------------------------------- 参数检查
def check_sampling(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float,
                   max_new_tokens: int) -> None:
    """采样参数不合法时给出中文错误（temperature ≤ 0 合法：表示贪心）。"""
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature != temperature:
        raise ValueError(f"temperature 必须是数字，收到 {temperature!r}。常用 0.7；≤ 0 表示贪心（每步取概率最大的 token）。")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k 必须是 ≥ 1 的整数（或 None 表示不用），收到 {top_k!r}。常用 50。")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p 必须在 (0, 1] 之间，收到 {top_p!r}。常用 0.9；1.0 或 None 表示不用 top-p。")
    if not isinstance(repetition_penalty, (int, float)) or not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty 必须 > 0，收到 {repetition_penalty!r}。常用 1.1；1.0 表示不惩罚。")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens 必须是 ≥ 1 的整数，收到 {max_new_tokens!r}。")


def as_text(message, what: str = "消息") -> str:
    """用户输入 → str：bytes 按 UTF-8 解码（不合法时报中文错误）；空消息报错。"""
    if isinstance(message, (bytes, bytearray)):
        message = decode_utf8(bytes(message), source=what)
    if not isinstance(message, str):
        raise TypeError(f"{what}必须是字符串（或 UTF-8 编码的 bytes），收到 {type(message).__name__}。")
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
        self.repetition_penalty, self.max_new_tokens, self.seed = repetition_penalty, max_new_tokens, seed
        check_sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens)
        self.history: list[dict] = []   # user / assistant 交替的完整历史（不含系统提示）
        self.turns = 0                  # 已经生成了几条回复（seed 固定时第 n 条用 seed + n）
        self.last: dict = {}            # 最近一条回复的统计：提示长度、丢掉几轮、token 数、速度、停止原因……
        self.system = None
        self.set_system(system)

    # ------------------------------------------------------------ 设置
    @property
    def prompt_budget(self) -> int:
        """提示最多能占的 token 数：窗口减去留给回复的 min(max_new_tokens, 窗口的一半)。"""
        return self.context_length - min(self.max_new_tokens, self.context_length // 2)

    def set_system(self, system: str | None) -> None:
        """换系统提示（历史保留）。None 或 "" 表示不用系统提示。太长（加上一条空的用户消息就占满提示的上限）时报错。"""
        if system is not None and not isinstance(system, str):
            raise TypeError(f"系统提示必须是字符串（或 None），收到 {type(system).__name__}。")
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
        check_sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.max_new_tokens)
        ids, info = self.build_prompt(text)
        max_new = min(self.max_new_tokens, self.context_length - len(ids))
        seed = None if self.seed is None else self.seed + self.turns
        self.turns += 1
        return self._reply(text, ids, max_new, seed, info)

    def _reply(self, text: str, ids: list[int], max_new: int, seed: int | None, info: dict) -> Iterator[str]:
        backend = self.backend
        decoder = StreamDecoder(backend.decode)
        reply_ids: list[int] = []
        stop, stop_id = ("max_new_tokens" if max_new == self.max_new_tokens else "context_full"), None
        tokens = backend.stream(ids, max_new, seed, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p, repetition_penalty=self.repetition_penalty)
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


# ---------------------------------------------------------------- 读取模型
def _is_course_folder(meta: dict) -> bool:
    return isinstance(meta.get("config"), dict) and meta.get("model_type") in ("llama", "gpt")


def load_chat_model(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """读取一个能对话的模型，返回 (model, tokenizer, 说明)。

    - path=None：第 06 章的 SFT 模型（course_lib.sft.load_sft_model，缺失时它会自动训练一个）；
      sft 模块不可用时，退回参考基座模型（它没学过对话，回答不会像样）。
    - path 是 course_lib 保存的文件夹（save_model 的 config.json + model.safetensors，分词器在同一文件夹或其
      tokenizer/ 子文件夹）：读成 course_lib 的 Llama + BPETokenizer。
    - path 是 Hugging Face 格式的文件夹（export_hf 导出的，或下载好的 Qwen2.5-0.5B-Instruct）：用 transformers 读。
    - path 不是本地文件夹、形如 "组织/模型名"：当作 Hugging Face Hub 上的模型名，用 transformers 下载（需要联网）。
    - 两种格式都不是：报中文错误。
    """
    if path is None:
        return _load_default(device)
    folder = Path(path).expanduser()
    if not folder.exists():
        text = str(path)
        if text.count("/") == 1 and not text.startswith((".", "/", "~")):
            return _load_transformers(text, device)
        raise FileNotFoundError(f"找不到模型文件夹 {folder}。请检查路径；也可以不加 --model，使用课程默认的 SFT 模型。")
    if not folder.is_dir():
        raise ValueError(f"{folder} 是一个文件，不是模型文件夹：--model 要给包含 config.json 的文件夹。")
    config = folder / "config.json"
    meta = None
    if config.exists():
        try:
            meta = json.loads(read_text_utf8(config))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config} 不是合法的 JSON（{e}）：文件可能损坏了。") from None
    if isinstance(meta, dict) and _is_course_folder(meta):
        return _load_course(folder, device)
    if isinstance(meta, dict) and "model_type" in meta:
        return _load_transformers(folder, device)
    raise ValueError(f"{folder} 既不是 course_lib 保存的模型文件夹（config.json 里有 \"config\" 和 \"model_type\"，"
                     "外加 model.safetensors 和分词器），也不是 Hugging Face 的模型文件夹（config.json 里有 \"model_type\"）。"
                     f"文件夹里有：{', '.join(sorted(p.name for p in folder.iterdir())[:8]) or '（空）'}。")


def _load_course(folder: Path, device):
    from .checkpoint import load_model
    from .llama import Llama
    from .tokenizer import BPETokenizer
    model = load_model(folder, device=device).eval()
    if not isinstance(model, Llama):
        raise ValueError(f"{folder} 里是第 03 章的 GPT（字符级），没有对话模板要用的特殊 token，不能用来对话。"
                         "请用第 05 章起的 Llama 模型文件夹。")
    for tok_dir in (folder, folder / "tokenizer"):
        if (tok_dir / BPETokenizer.MODEL_FILE).exists():
            return model, BPETokenizer.load(tok_dir), f"course_lib 模型 {folder}"
    raise FileNotFoundError(f"{folder} 里有模型，但找不到分词器（{BPETokenizer.MODEL_FILE} 和 {BPETokenizer.META_FILE}）。"
                            "请把训练这个模型时用的分词器 save() 到同一个文件夹。")


def _load_transformers(name, device):
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ImportError("读取 Hugging Face 格式的模型需要 transformers：pip install 'transformers>=5'") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name))
        model = AutoModelForCausalLM.from_pretrained(str(name), dtype=torch.float32).to(device).eval()
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"transformers 读不了 {name}（{first}）。如果是 Hub 上的模型名，需要联网；"
                         "如果是本地文件夹，请确认里面有 config.json、权重（*.safetensors）和分词器文件。") from None
    return model, tokenizer, f"transformers 模型 {name}"


def _load_default(device):
    try:
        from .sft import load_sft_model
    except ImportError:
        load_sft_model = None
    if load_sft_model is not None:
        model, tokenizer = load_sft_model(device=device)
        return model.eval(), tokenizer, "第 06 章的 SFT 模型（小雁）"
    from .reference import load_reference
    model, tokenizer = load_reference(device=device)
    return model, tokenizer, "参考基座模型（只做过预训练，没有学过对话：回答不会像样）"


# ---------------------------------------------------------------- 交互：判断环境、命令循环、notebook 聊天框
def _kernel():
    """正在运行的 Jupyter 内核（不在 Jupyter 里时是 None）。"""
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    return getattr(shell, "kernel", None)


def is_interactive() -> bool:
    """现在能不能等人输入？

    - 环境变量 COURSE_INTERACTIVE=1 / 0 强制指定；
    - TQDM_DISABLE=1（course_lib.nbrun 批量执行 notebook 时设置）→ 不能；
    - 在 Jupyter 内核里：看前端是否允许输入（nbclient / nbval 执行时 allow_stdin=False）；
    - 普通 Python：标准输入是不是终端。
    """
    flag = os.environ.get("COURSE_INTERACTIVE")
    if flag in ("0", "1"):
        return flag == "1"
    if os.environ.get("TQDM_DISABLE") == "1":
        return False
    kernel = _kernel()
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", True))
    return sys.stdin is not None and sys.stdin.isatty()


def print_reply(session: ChatSession, message, out=None, name: str = ASSISTANT_NAME) -> str:
    """把一条回复流式地打印出来（每个片段立刻 flush），返回完整回复。"""
    out = out or sys.stdout
    out.write(f"{name}：")
    out.flush()
    pieces = []
    for piece in session.stream(message):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(pieces)


HELP = ("命令：/reset 清空对话历史；/system 文字 换系统提示（只输入 /system 显示当前的）；/help 显示本帮助；"
        "/exit（或 Ctrl-D）退出。生成时按 Ctrl-C 只停止这一条回复。")


def repl(session: ChatSession, read_line: Callable[[str], str | None], out=None,
         name: str = ASSISTANT_NAME) -> int:
    """命令行和 notebook 退路共用的对话循环。read_line(提示) 返回一行输入，读到结尾时返回 None。返回对话轮数。"""
    out = out or sys.stdout

    def say(text):
        out.write(text + "\n")
        out.flush()

    n = 0
    while True:
        try:
            line = read_line("你：")
        except KeyboardInterrupt:                 # 等待输入时按 Ctrl-C：不退出，提示怎么退出
            say("\n（要退出请输入 /exit 或按 Ctrl-D）")
            continue
        except ValueError as e:                   # 输入不是合法的 UTF-8
            say(f"错误：{e}")
            continue
        if line is None:                          # EOF（Ctrl-D，或管道里的输入读完了）
            say("")
            return n
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command in ("/exit", "/quit"):
                return n
            if command == "/reset":
                session.reset()
                say("（对话历史已清空）")
            elif command == "/system":
                if not arg.strip():
                    say(f"（当前的系统提示：{session.system or '无'}）")
                    continue
                try:
                    session.set_system(arg.strip())
                    say("（系统提示已更新）")
                except ValueError as e:
                    say(f"错误：{e}")
            elif command == "/help":
                say(HELP)
            else:
                say(f"不认识的命令 {command}。{HELP}")
            continue
        try:
            print_reply(session, line, out, name)
            n += 1
        except KeyboardInterrupt:                 # 生成时按 Ctrl-C：只停止这一条回复
            say("\n（已停止这条回复）")
        except ValueError as e:
            say(f"错误：{e}")


def run_demo(session: ChatSession, messages=DEMO_MESSAGES, out=None, name: str = ASSISTANT_NAME) -> list[dict]:
    """按顺序发送预先写好的几条消息，把对话流式地打印出来；返回这段对话（session.messages）。"""
    out = out or sys.stdout
    for message in messages:
        out.write(f"你：{message}\n")
        print_reply(session, message, out, name)
    return session.messages


def chat_ui(session: ChatSession, demo_messages=DEMO_MESSAGES, name: str = ASSISTANT_NAME):
    """notebook 里的聊天框（ipywidgets，流式输出）。

    - 不能交互时（用 nbrun / nbval 执行 notebook，见 is_interactive）：不等待输入，改为演示 demo_messages；
    - 装了 ipywidgets、在 Jupyter 里：显示聊天框（输入框 + 发送 / 重置按钮），返回这个控件；
    - 没有 ipywidgets：退回普通的 input() 循环（命令与 python -m course_lib.chat 相同）。
    """
    if not is_interactive():
        print("（现在是非交互运行：不等待输入，演示几轮预先写好的对话。在 Jupyter 里自己运行时，这里会出现聊天框。）")
        return run_demo(session, demo_messages, name=name)
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:
        widgets = None
    if widgets is None or _kernel() is None:
        print("（没有可用的 ipywidgets 聊天框，改用文字输入。）" + HELP)
        return repl(session, _input_reader, name=name)

    log = widgets.Output(layout=widgets.Layout(border="1px solid #ccc", height="320px", overflow="auto"))
    box = widgets.Text(placeholder="输入消息，按回车发送", continuous_update=False,
                       layout=widgets.Layout(width="70%"))
    send = widgets.Button(description="发送", button_style="primary")
    reset = widgets.Button(description="重置")

    def submit(_=None):
        message = box.value
        if not message.strip():
            return
        box.value = ""
        with log:
            print(f"你：{message}")
            try:
                print_reply(session, message, name=name)
            except KeyboardInterrupt:             # Jupyter 的「中断内核」
                print("\n（已停止这条回复）")
            except ValueError as e:
                print(f"错误：{e}")

    def clear(_):
        session.reset()
        log.clear_output()
        with log:
            print("（对话历史已清空）")

    box.observe(lambda change: submit() if change["new"] else None, names="value")
    send.on_click(submit)
    reset.on_click(clear)
    ui = widgets.VBox([log, widgets.HBox([box, send, reset])])
    display(ui)
    return ui


def _input_reader(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None
    except UnicodeDecodeError as e:
        raise ValueError(f"输入不是合法的 UTF-8 文本（{e.reason}），请重新输入。") from None


def _stdin_reader(prompt: str) -> str | None:
    """命令行读一行：终端里用 input()（可以编辑）；管道里按字节读，不是合法 UTF-8 时报中文错误。"""
    if sys.stdin.isatty():
        return _input_reader(prompt)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    raw = sys.stdin.buffer.readline()
    if not raw:
        return None
    text = decode_utf8(raw.rstrip(b"\r\n"), source="输入")
    sys.stdout.write(text + "\n")                 # 管道输入不会回显：写出来，记录才看得懂
    return text


# ---------------------------------------------------------------- 命令行
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m course_lib.chat", description="在终端里和课程的模型对话（流式输出）。" + HELP)
    ap.add_argument("--model", default=None,
                    help="模型文件夹：course_lib 的格式，或 Hugging Face 的格式（也可以是 Hub 上的模型名，需联网）。"
                         "默认：第 06 章的 SFT 模型；没有 sft 模块时用参考基座模型。")
    ap.add_argument("--system", default=None, help="系统提示（默认是课程的 DEFAULT_SYSTEM；传空字符串表示不用）")
    ap.add_argument("--temperature", type=float, default=0.7, help="温度；≤ 0 表示贪心（默认 0.7）")
    ap.add_argument("--top_k", type=int, default=None, help="只在概率最大的 k 个 token 里采样（默认不用）")
    ap.add_argument("--top_p", type=float, default=0.9, help="核采样的累计概率，(0, 1] 之间（默认 0.9）")
    ap.add_argument("--repetition_penalty", type=float, default=1.1, help="重复惩罚，> 0（默认 1.1；1 表示不惩罚）")
    ap.add_argument("--max_new_tokens", type=int, default=128, help="每条回复最多几个 token（默认 128）")
    ap.add_argument("--seed", type=int, default=None, help="随机种子：固定后整段对话可复现")
    ap.add_argument("--device", default="cpu", help="cpu / cuda / mps（默认 cpu）")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, tokenizer, description = load_chat_model(args.model, device=args.device)
        system = DEFAULT_SYSTEM if args.system is None else args.system
        session = ChatSession(model, tokenizer, system, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"错误：{e}", file=sys.stderr)
        return 2
    print(f"模型：{description}（上下文窗口 {session.context_length} 个 token）\n{HELP}", flush=True)
    repl(session, _stdin_reader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
