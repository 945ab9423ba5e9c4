"""python -m course_lib.chat：在终端里和课程的模型对话（流式输出）。"""
from __future__ import annotations

import sys

from ..chat import ChatSession
from ..chat_format import DEFAULT_SYSTEM
from ..chat_models import load_chat_model
from ..chat_ui import HELP, _input_reader, repl
from ..device import get_device
from ..files import decode_utf8
from . import ArgumentParser


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


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(
        prog="python -m course_lib.chat", description="在终端里和课程的模型对话（流式输出）。" + HELP)
    ap.add_argument("--model", default=None,
                    help="模型文件夹：course_lib 的格式，或 Hugging Face 的格式（也可以是 Hub 上的模型名，需联网）。"
                         "默认：第 06 章的 SFT 模型；没有 sft 模块时用参考基座模型。"
                         "简称 chat = 课程的参考对话模型 assets/chat_model（同一配方，训练得长得多），"
                         "aligned = 第 10 章 DPO 对齐后的模型。")
    ap.add_argument("--system", default=None, help="系统提示（默认是课程的 DEFAULT_SYSTEM；传空字符串表示不用）")
    ap.add_argument("--temperature", type=float, default=0.7, help="温度；≤ 0 表示贪心（默认 0.7）")
    ap.add_argument("--top_k", type=int, default=None, help="只在概率最大的 k 个 token 里采样（默认不用）")
    ap.add_argument("--top_p", type=float, default=0.9, help="核采样的累计概率，(0, 1] 之间（默认 0.9）")
    ap.add_argument("--repetition_penalty", type=float, default=1.1, help="重复惩罚，> 0（默认 1.1；1 表示不惩罚）")
    ap.add_argument("--max_new_tokens", type=int, default=128, help="每条回复最多几个 token（默认 128）")
    ap.add_argument("--seed", type=int, default=None, help="随机种子：固定后整段对话可复现")
    ap.add_argument("--device", default="cpu", help="cpu / cuda / cuda:N / mps（默认 cpu）")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = get_device(args.device)  # --device cuda 但没有 GPU、--device tpu：一行中文错误
        model, tokenizer, description = load_chat_model(args.model, device=device)
        system = DEFAULT_SYSTEM if args.system is None else args.system
        session = ChatSession(model, tokenizer, system, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as e:
        print(f"错误：{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # 读模型（或现场训练 SFT 模型）时按了 Ctrl-C
        print("\n已取消。", file=sys.stderr)
        return 130
    print(f"模型：{description}（上下文窗口 {session.context_length} 个 token）\n{HELP}", flush=True)
    repl(session, _stdin_reader)
    return 0
