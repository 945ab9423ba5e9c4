"""bench/ 里各个脚本共用的一点：把结果写进 docs/benchmarks.md 里成对的标记之间（数字只来自这次运行）。"""
from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, tag: str, body: str) -> None:
    """用 body 替换 path 里 <!-- tag --> … <!-- /tag --> 之间的内容；还没有这对标记就追加到文件末尾。"""
    from course_lib.files import atomic_write_text
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"<!-- {tag} -->\n{body}\n<!-- /{tag} -->"
    if f"<!-- {tag} -->" in text:
        text = re.sub(rf"<!-- {re.escape(tag)} -->.*?<!-- /{re.escape(tag)} -->", lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
