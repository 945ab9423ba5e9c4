"""python -m course_lib.start：检查环境，准备好离线语料，然后打开 JupyterLab。

在 CI（环境变量 CI=true）里或加 --check 时只做检查，不启动 JupyterLab。
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from ..paths import repo_root


HELP = """用法：python -m course_lib.start [--check]

检查课程环境（版本、设备、profile、中文字体、离线语料），然后在 notebooks/ 打开 JupyterLab。
  --check   只做检查，不启动 JupyterLab（环境变量 CI=true 时也是这样）
  -h, --help  显示本帮助"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    unknown = [a for a in argv if a != "--check"]
    if unknown:
        print(f"错误：不认识的参数 {' '.join(unknown)}。只有 --check（只检查、不启动 JupyterLab）和 --help。", file=sys.stderr)
        return 2
    from ..data import load_corpus
    from ..plotting import setup_chinese_font
    from ..report import print_environment

    from ..device import get_device
    from ..profiles import active_profile
    try:
        active_profile()  # COURSE_PROFILE、COURSE_DEVICE 写错时给一行中文错误，而不是 traceback
        get_device()
    except (ValueError, RuntimeError) as e:
        print(f"错误：{e}", file=sys.stderr)
        return 2
    print("== 课程环境 ==")
    print_environment()
    print(f"中文字体     : {setup_chinese_font()}")
    t0 = time.perf_counter()
    try:
        n = len(load_corpus("news", "train"))
    except (OSError, ValueError) as e:  # 数据目录写不进去（COURSE_DATA_DIR 指向一个文件、只读）、数据包坏了
        print(f"错误：{e}", file=sys.stderr)
        return 1
    print(f"离线语料     : 人民日报 1998-01 训练集 {n:,} 个字符（{time.perf_counter() - t0:.1f} 秒）")
    if "--check" in argv or os.environ.get("CI", "").lower() in ("1", "true"):
        print("检查完成（CI 或 --check：不启动 JupyterLab）。")
        return 0
    jupyter = shutil.which("jupyter")
    if jupyter is None:
        print("找不到 jupyter 命令：请先 pip install -e . 安装课程依赖。", file=sys.stderr)
        return 1
    root = repo_root()
    target = str(root / "notebooks") if root else "."
    print(f"正在启动 JupyterLab：{target}（按 Ctrl-C 退出）")
    extra = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # Docker、云主机里常以 root 运行
    os.execv(jupyter, [jupyter, "lab", target, *extra])
    return 0  # 不会到这里


if __name__ == "__main__":
    raise SystemExit(main())
