"""第 09 章：怎样和 ChatSession 交互——判断能不能等人输入、命令循环（命令行和 notebook 的退路共用）、
notebook 里的 ipywidgets 聊天框，以及非交互运行（nbval / CI）时的演示对话。"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .chat import ChatSession

# 非交互运行（nbrun / nbval / CI）时 chat_ui 演示的几轮对话
DEMO_MESSAGES = ("你好，你是谁？", "「画蛇添足」是什么意思？", "计算：27+15=？")
ASSISTANT_NAME = "小雁"


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
