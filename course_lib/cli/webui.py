"""python -m course_lib.webui：和课程模型聊天的网页（实现在 course_lib.webui）。"""
from __future__ import annotations

from . import ArgumentParser, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m course_lib.webui",
                       description="开一个和课程模型聊天的网页（gradio）：流式回复、系统提示、采样参数、清空对话、模型信息。"
                                   "模型可以在本进程里运行（--model），也可以来自 OpenAI 兼容的服务器（--server）。")
    p.add_argument("--model", help="course_lib 保存的模型文件夹，或简称 chat（参考对话模型）、aligned（第 10 章对齐后的模型）。"
                                   "默认：第 06 章的 SFT 模型（和 python -m course_lib.chat 一样）")
    p.add_argument("--server", help="代替 --model：OpenAI 兼容服务器的地址，例如 http://127.0.0.1:8000/v1"
                                    "（先运行 python -m course_lib.serve --model chat）")
    p.add_argument("--host", default="127.0.0.1", help="监听的地址（默认 127.0.0.1：只有本机能打开；0.0.0.0 对局域网开放）")
    p.add_argument("--port", type=int, default=7860, help="端口（默认 7860）")
    p.add_argument("--device", default="cpu", help="--model 时模型放在哪里：cpu（默认）、cuda、mps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        if args.model is not None and args.server is not None:
            raise ValueError("--model（本进程里的模型）和 --server（OpenAI 兼容的服务器）只能给一个。")
        if not 1 <= args.port <= 65535:
            raise ValueError(f"--port 不合理：{args.port}。")
        from ..webui import LocalBackend, ServerBackend, build_app, launch
        backend = ServerBackend(args.server) if args.server else LocalBackend.load(args.model, args.device)
        page = launch(build_app(backend), args.host, args.port)
        print(f"{backend.info['模型']}：在浏览器里打开 {page.url} 。Ctrl-C 停止。", flush=True)
        page.wait()
    return run(body, interrupted=0)       # Ctrl-C 就是正常地停下网页
