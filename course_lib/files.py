"""文件读写的小工具：原子写入（先写临时文件再改名），以及带中文报错的 UTF-8 读取。

原子写入保证：程序在写到一半时崩溃，旧文件仍然完整，绝不会留下半个文件。
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """以二进制写方式打开 path 的「替身」：with 块正常结束才 fsync 并 os.replace 成 path；
    块里出了任何异常，临时文件删掉，旧的 path 原样保留。适合边算边写的大文件。"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp 建的是 0600；改成普通文件该有的权限
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """把 data 原子地写到 path：写同目录下的临时文件、fsync，再 os.replace。"""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def decode_utf8(data: bytes, source: str = "输入") -> str:
    """把字节解码成文本；不是合法 UTF-8 时给出能照着修的中文错误。"""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{source} 不是合法的 UTF-8 文本（第 {e.start} 个字节附近：{data[e.start:e.start + 8]!r}）。"
            "请先把文件转成 UTF-8，例如：iconv -f GBK -t UTF-8 旧文件 > 新文件。"
        ) from None


def read_text_utf8(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"找不到文件 {path}，请检查路径是否正确。")
    return decode_utf8(path.read_bytes(), source=f"文件 {path}")
