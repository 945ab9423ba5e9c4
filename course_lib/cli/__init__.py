"""命令行入口（不属于可导入的核心库）：每个文件一个命令，都有 main(argv) -> 退出码。

- pretrain.py：python -m course_lib.train     预训练一个 Llama（第 05 章）
- reference.py：python -m course_lib.reference 一条命令重建参考基座模型
- chat.py：python -m course_lib.chat          在终端里和模型对话（第 09 章）
- start.py：python -m course_lib.start        检查环境、打开 JupyterLab（README 的第一条命令）
- eval.py：python -m course_lib.eval           评测一个模型，写成绩单（docs/report_*.md）
- nbrun.py：python -m course_lib.nbrun        维护者工具：原地重新执行 notebook、记录用时
- gguf.py：python -m course_lib.gguf          导出 GGUF（llama.cpp / ollama，第 11 章）
- serve.py：python -m course_lib.serve        OpenAI 兼容的服务器（第 11 章）
- webui.py：python -m course_lib.webui        和模型聊天的网页（gradio，第 11 章）

老的 python -m course_lib.xxx 写法都保留：那些模块末尾只是把命令转到这里。
"""
from __future__ import annotations

import argparse
import re
import sys

# argparse 自带的英文提示 → 中文（帮助页的标题，以及最常见的几种参数错误）
_HELP_WORDS = (("usage: ", "用法："), ("positional arguments:", "位置参数："), ("options:", "选项："),
               ("show this help message and exit", "显示本帮助并退出"))
_ERRORS = ((r"unrecognized arguments: (.*)", r"不认识的参数：\1。"),
           (r"argument (\S+): expected one argument", r"\1 后面缺少值。"),
           (r"argument (\S+): invalid (\w+) value: (.*)", r"\1 的值 \3 不是合法的 \2。"),
           (r"the following arguments are required: (.*)", r"缺少必需的参数：\1。"),
           (r"argument (\S+): (.*)", r"\1：\2"))


class ArgumentParser(argparse.ArgumentParser):
    """说中文的 argparse：--help 的标题是中文；参数写错时只打印一行中文错误（退出码 2），没有英文、没有 traceback。"""

    def format_help(self) -> str:
        text = super().format_help()
        for en, zh in _HELP_WORDS:
            text = text.replace(en, zh)
        return text

    def format_usage(self) -> str:
        return super().format_usage().replace("usage: ", "用法：")

    def error(self, message: str):
        for pattern, zh in _ERRORS:
            if re.fullmatch(pattern, message):
                message = re.sub(pattern, zh, message)
                break
        print(f"错误：{message}请用 {self.prog} --help 查看用法。", file=sys.stderr)
        raise SystemExit(2)


USER_ERRORS = (ValueError, TypeError, RuntimeError, OSError, ImportError)   # 用户能自己改正的错误（路径、参数、缺包）


def run(body, interrupted: int = 130) -> int:
    """执行命令的主体 body()（返回退出码，None 当作 0）：用户能改正的错误只打印一行中文「错误：…」，退出码 2；
    Ctrl-C 打印「已取消。」，退出码 interrupted（服务器这类「按 Ctrl-C 就是正常停止」的命令传 0，什么也不打印）。"""
    try:
        return body() or 0
    except USER_ERRORS as e:
        print(f"错误：{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted:
            print("\n已取消。", file=sys.stderr)
        return interrupted
