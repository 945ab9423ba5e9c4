"""python -m course_lib.gguf：把课程的模型导出成 GGUF（llama.cpp / ollama），旁边写一个 ollama 的 Modelfile。"""
from __future__ import annotations

from . import ArgumentParser, run


def build_parser() -> ArgumentParser:
    from ..gguf import TYPES
    p = ArgumentParser(prog="python -m course_lib.gguf",
                       description="把 course_lib 的 Llama 导出成一个 .gguf 文件（权重 + 分词器 + 对话模板），"
                                   "llama.cpp、llama-cpp-python、ollama 都能直接读；同一文件夹里再写一个 ollama 的 Modelfile。")
    p.add_argument("--model", required=True,
                   help="course_lib 保存的模型文件夹，或简称 chat（参考对话模型）、aligned（第 10 章对齐后的模型）")
    p.add_argument("--out", required=True, help="输出的 .gguf 文件路径")
    p.add_argument("--type", default="f16", choices=TYPES,
                   help="权重类型：f32（与原模型逐位相同）、f16（默认，文件小一半）、q8_0（8 位分块量化，约四分之一）、"
                        "q4_0（4 位分块量化，最小，质量损失看得出来）")
    p.add_argument("--name", default="course-llama", help="写进 GGUF 元数据的模型名（默认 course-llama）")
    p.add_argument("--no-modelfile", action="store_true", help="不写 ollama 的 Modelfile")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from ..chat_models import load_chat_model
        from ..gguf import export_gguf, write_modelfile
        from ..llama import Llama
        model, tokenizer, description = load_chat_model(args.model)
        if not isinstance(model, Llama):
            raise TypeError(f"{args.model} 是 transformers 的模型：GGUF 导出只支持 course_lib 的模型文件夹。"
                            "transformers 的模型请用 llama.cpp 自带的 convert_hf_to_gguf.py。")
        out = export_gguf(model, tokenizer, args.out, args.type, name=args.name)
        print(f"{description} → {out}（{args.type}，{out.stat().st_size / 1e6:.1f} MB）")
        if not args.no_modelfile:
            mf = write_modelfile(out)
            print(f"ollama 的 Modelfile：{mf}。在那个文件夹里运行 ollama create course-llama -f Modelfile，"
                  "然后 ollama run course-llama。")
    return run(body)
