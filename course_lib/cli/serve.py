"""python -m course_lib.serve：OpenAI 兼容的服务器（实现在 course_lib.serve）。"""
from __future__ import annotations

from . import ArgumentParser, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m course_lib.serve",
                       description="把课程的模型开成 OpenAI 兼容的 HTTP 服务：GET /v1/models、POST /v1/chat/completions"
                                   "（支持流式）。openai 包、LangChain 等把 base_url 指向 http://HOST:PORT/v1 就能用。")
    p.add_argument("--model", required=True,
                   help="course_lib 保存的模型文件夹，或简称 chat（参考对话模型）、aligned（第 10 章对齐后的模型）")
    p.add_argument("--host", default="127.0.0.1", help="监听的地址（默认 127.0.0.1：只有本机能连；0.0.0.0 对局域网开放）")
    p.add_argument("--port", type=int, default=8000, help="端口（默认 8000）")
    p.add_argument("--name", default=None, help="API 里的模型名（默认：简称本身，或 course-llama）")
    p.add_argument("--slots", type=int, default=8, help="最多几个请求同时解码（批量解码的槽位数，默认 8）")
    p.add_argument("--max-queue", type=int, default=64, help="最多几个请求排队，再多就回 503（默认 64）")
    p.add_argument("--device", default="cpu", help="cpu（默认）、cuda、mps")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch 在 CPU 上用几个线程（默认 1：小模型时多开线程反而更慢，见 docs/deploy.md；0 = PyTorch 的默认）")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from ..serve import serve
        for key in ("port", "slots", "max_queue", "threads"):
            value = getattr(args, key)
            if value < (0 if key in ("max_queue", "threads") else 1) or (key == "port" and value > 65535):
                raise ValueError(f"--{key.replace('_', '-')} 不合理：{value}。")
        serve(args.model, args.host, args.port, args.name, args.slots, args.max_queue, args.device, args.threads or None)
    return run(body, interrupted=0)       # Ctrl-C 就是正常地停下服务器
