"""文件读写的小工具：原子写入（先写临时文件再改名），以及带中文报错的读取（文本、JSON、JSON Lines、safetensors）。

原子写入保证：程序在写到一半时崩溃，旧文件仍然完整，绝不会留下半个文件。
写不进去（磁盘满了、文件夹只读、路径上有个同名文件）时，报错说清楚是哪个路径、该怎么办；
异常还是原来那一类（PermissionError 仍是 PermissionError），调用方的 except OSError 照样管用。

课程里所有读文件的地方都用下面的 read_* 函数，这样一个文件坏了（被截断、被手工改坏、不是 UTF-8、
不是 safetensors），报错里都有文件名、出错的行号和「怎么重新生成它」。新写的加载函数也请用它们。
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)

_NEWLINES = re.compile(r"\r\n|\r|\n")
DEFAULT_FIX = "它可能写到一半被中断，或者被手工改坏了。请重新生成这个文件（或从备份恢复）。"


# ---------------------------------------------------------------- 写：原子写入
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
_EXPLAINED = "_course_lib_explained"  # 已经换成中文说明的 OSError 带着这个属性，不再重复包装


def as_path(path, what: str = "路径") -> Path:
    """str / pathlib.Path → Path。None、空字符串和别的类型给出中文错误（Path("") 会悄悄变成当前文件夹）。"""
    if isinstance(path, os.PathLike) or (isinstance(path, str) and path.strip()):
        return Path(path)
    if isinstance(path, str):
        raise ValueError(f"{what}不能是空字符串：请给一个文件或文件夹的路径（空路径会变成当前文件夹）。")
    hint = "是不是某个变量还没赋值？（例如 latest_checkpoint 找不到检查点时返回 None）" if path is None else ""
    space = " " if what[-1:].isascii() and what[-1:].isalnum() else ""
    raise TypeError(f"{what}{space}应该是一个路径（str 或 pathlib.Path），收到 {type(path).__name__} {path!r}。{hint}")


def _blocking_file(folder: Path) -> Path | None:
    """folder（或它的某一级上层）的位置上其实是个文件时，返回那个文件；否则 None。"""
    for p in (folder, *folder.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


def write_error(e: OSError, path: str | os.PathLike) -> OSError:
    """把写 path 时遇到的 OSError 换成同一类、带中文说明（哪个路径、怎么办）的异常，errno 保持不变。

    自己写文件、建文件夹的代码也可以用：except OSError as e: raise write_error(e, path) from None
    """
    path = Path(path)
    if getattr(e, _EXPLAINED, False):
        return e
    reason = e.strerror or str(e)
    kept = f"没有留下写了一半的文件；{path.name} 若原来就有，内容不变。"
    blocker = _blocking_file(path.parent) if e.errno in (errno.ENOTDIR, errno.EEXIST) else None
    if e.errno in _DISK_FULL:
        msg = (f"磁盘空间不足，写不下 {path}（{reason}）。{kept}"
               "请清理磁盘空间（例如删掉 runs/ 里不再需要的检查点、data/cache/ 里的缓存）后重试，或把输出换到空间更大的磁盘上。")
    elif e.errno in _NO_PERMISSION:
        where = next((p for p in (path.parent, *path.parent.parents) if os.path.lexists(p)), path.parent)
        msg = (f"没有权限写入 {path}（{reason}）：{where} 是只读的，或者不属于当前用户。{kept}"
               "请换一个可写的文件夹（例如用环境变量 COURSE_DATA_DIR 把课程的数据目录指到自己的目录），或者用 chmod 修改权限。")
    elif blocker is not None:
        msg = (f"{blocker} 是一个文件，不是文件夹，所以没法把 {path.name} 写进去（{reason}）。"
               "请换一个文件夹路径，或者先把这个文件改名或删掉。")
    elif e.errno == errno.EISDIR:
        msg = (f"{path} 是一个文件夹，不能当成文件来写（{reason}）。"
               "请换一个文件名，或者先把这个文件夹改名或删掉。")
    elif e.errno == errno.EFBIG:
        msg = (f"{path} 太大，这个文件系统存不下（{reason}；例如 FAT32 的单个文件最多 4 GB）。{kept}"
               "请把输出换到 ext4、NTFS、APFS 等文件系统的磁盘上。")
    elif e.errno == errno.ENAMETOOLONG:
        msg = f"路径 {path} 太长（{reason}）。请换一个短一些的文件名或文件夹。"
    else:
        msg = f"写入 {path} 失败（{type(e).__name__}：{reason}）。{kept}请检查路径和磁盘后重试。"
    try:
        new = type(e)(msg)
    except TypeError:  # 第三方的 OSError 子类，构造参数不同
        new = OSError(msg)
    new.errno = e.errno  # str(new) 仍是 msg（没有 strerror 时 OSError 只显示 msg）
    setattr(new, _EXPLAINED, True)
    return new


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """以二进制写方式打开 path 的「替身」：with 块正常结束才 fsync 并 os.replace 成 path；
    块里出了任何异常，临时文件删掉，旧的 path 原样保留。适合边算边写的大文件。

    写不进去时（磁盘满、没有权限、路径上有同名文件……）抛出同一类的 OSError，说明是哪个路径、该怎么办。
    with 块里自己抛出的 OSError 只有「磁盘满了、文件太大」这两种会被改写（它们只可能来自写这个文件），其余原样抛出。
    """
    path = as_path(path, "要写入的文件")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(e, path) from None
    in_body = False
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp 建的是 0600；改成普通文件该有的权限
            in_body = True
            yield f
            in_body = False
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            if os.path.exists(tmp):
                os.unlink(tmp)
        if isinstance(e, OSError) and (not in_body or e.errno in _DISK_FULL | {errno.EFBIG}):
            raise write_error(e, path) from None
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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)  # 同一个磁盘上：硬链接，不占空间、瞬间完成
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(src), str(dst))


def _swap_in(new: Path, path: Path) -> None:
    """把写好的文件夹 new 换成 path：旧的改名到一旁 → new 改名成 path → 删掉旧的。出错时 path 恢复原样。"""
    if not os.path.lexists(path):
        os.rename(new, path)
        return
    old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


_HELD_LOCKS: set[Path] = set()     # 这个进程已经拿到的锁：同一进程里嵌套的 with file_lock(同一路径) 直接通过


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """同一台机器上进程之间的互斥锁：with file_lock(文件夹): 检查、训练、保存……

    锁是旁边的 .名字.lock 文件上的 fcntl.flock（进程退出时自动释放，崩溃也不会留下死锁）。用途：几个进程
    （例如并行执行的 notebook 测试）可能同时发现 data/runs/sft 缺了、同时训练并写入同一个文件夹——加锁之后一个一个来，
    后来的直接读到前一个写好的。没有 fcntl 的系统（Windows）上不加锁。同一进程里可以嵌套。
    """
    path = Path(path).resolve()
    if path in _HELD_LOCKS:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows：课程在那里一次只跑一个 notebook，不需要
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _HELD_LOCKS.add(path)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(path)
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, keep=None):
    """整个文件夹的原子替换：yield 一个与 path 同级的临时文件夹，往里写；with 块正常结束后，它整个换成 path。

    - 块里出了任何异常，或者换的时候出错：path 原样不动（一个字节都不变），临时文件夹删掉。
    - 换的过程：旧文件夹改名到一旁 → 新文件夹改名成 path → 删掉旧的（两次改名都是瞬间完成的）。
    - keep(name) 为真的旧条目（例如用户自己放进去的 README.md）在换之前硬链接（不行就复制）进新文件夹，不会丢；
      其余旧文件随旧文件夹一起删掉，不会有上一次留下的文件混在新文件旁边。
    写的过程中，旧的和新的同时在磁盘上：需要多一份空间。
    """
    path = as_path(path, "要写入的文件夹")
    if path.is_symlink():
        path = path.resolve()  # 替换链接指向的文件夹，链接本身不动
    if os.path.lexists(path) and not path.is_dir():
        raise FileExistsError(f"{path} 是一个文件，不是文件夹。请换一个文件夹路径，或者先把这个文件改名或删掉。")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp 建的是 0700；改成普通文件夹该有的权限
    except OSError as e:
        raise write_error(e, path) from None
    in_body = True
    try:
        yield tmp
        in_body = False
        if keep is not None and path.is_dir():
            for entry in sorted(path.iterdir()):
                if keep(entry.name) and not os.path.lexists(tmp / entry.name):
                    _carry_over(entry, tmp / entry.name)
        _swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and getattr(e, _EXPLAINED, False) and e.args:
            # 报错里写的是临时文件夹里的路径；换成用户给的路径，并说明旧文件夹没动
            e.args = (str(e.args[0]).replace(str(tmp), str(path)) + f"（{path} 保持原样，没有改动。）",)
        elif isinstance(e, OSError) and (not in_body or e.errno in _DISK_FULL | {errno.EFBIG}):
            raise write_error(e, path) from None
        raise


# ---------------------------------------------------------------- 文本：UTF-8
_UTF8_FIX = "请先把文件转成 UTF-8，例如：iconv -f GBK -t UTF-8 旧文件 > 新文件。"


def decode_utf8(data: bytes, source: str = "输入") -> str:
    """把字节解码成文本；不是合法 UTF-8 时给出能照着修的中文错误。"""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{source} 不是合法的 UTF-8 文本（第 {e.start} 个字节附近：{data[e.start:e.start + 8]!r}）。"
            + _UTF8_FIX
        ) from None


def check_utf8(text: str, source: str = "输入") -> str:
    """检查 str 能编码成 UTF-8，原样返回；不能时给出与 decode_utf8 同样的中文错误。

    合法的 str 什么字都能编码，只有「落单的代理字符」（U+D800–U+DFFF，例如 "\\ud800"）不行：终端或文件
    不是 UTF-8 时，Python 用 surrogateescape 把读不懂的字节变成它们。分词器、json.dumps 遇到它们都会出错。
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{source} 不是合法的 UTF-8 文本（第 {e.start} 个字符附近有落单的代理字符 {text[e.start:e.start + 8]!r}，"
            "通常是终端或文件用了别的编码，读不懂的字节被换成了这些字符）。"
            "请把终端的编码设成 UTF-8（例如 export LANG=C.UTF-8）；文字来自文件的话，" + _UTF8_FIX.removeprefix("请")
        ) from None
    return text


# ---------------------------------------------------------------- 读：文本、JSON、JSON Lines、safetensors
def _read_bytes(path: Path, what: str, fix: str | None) -> bytes:
    hint = fix or ""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"找不到{what} {path}，请检查路径是否正确。{hint}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path} 是一个文件夹，不是{what}。请检查路径是否正确（是不是少写了文件名？）。") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"找不到{what} {path}：路径上的 {_blocking_file(path.parent)} 是一个文件，不是文件夹。"
                                 "请检查路径是否正确。") from None
    except PermissionError:
        raise PermissionError(f"没有权限读取{what} {path}。请用 chmod 修改权限，或换一个用户可读的位置。") from None


def read_text_utf8(path: str | os.PathLike, what: str = "文件", fix: str | None = None) -> str:
    """读 UTF-8 文本。找不到、是文件夹、没有权限、不是 UTF-8 时都给出中文错误（what 是文件的称呼，fix 是补救办法）。"""
    path = as_path(path, what)
    return decode_utf8(_read_bytes(path, what, fix), source=f"{what} {path}")


_JSON_REASONS = {
    "Expecting value": "这里应该是一个值：数字、字符串、列表或对象",
    "Expecting ',' delimiter": "缺少逗号 ,",
    "Expecting ':' delimiter": "缺少冒号 :",
    "Expecting property name enclosed in double quotes": "这里应该是用双引号括起来的键名，也可能是最后一项后面多了个逗号",
    "Unterminated string starting at": "从这里开始的字符串没有结束，缺少右引号",
    "Extra data": "一个完整的 JSON 之后还有多余的内容",
    "Invalid control character at": "字符串里有不能直接出现的控制字符，换行要写成 \\n",
    "Invalid \\escape": "无效的转义：反斜杠后面只能跟 \" \\ / b f n r t u",
    "Invalid \\uXXXX escape": "无效的 \\uXXXX 转义",
    "Unexpected UTF-8 BOM (decode using utf-8-sig)": "文件开头有 Windows 记事本常加的 UTF-8 BOM，JSON 不允许",
}


def _json_problem(e: json.JSONDecodeError, in_line: bool = False) -> str:
    """「第 3 行第 14 列：缺少逗号 ,（Expecting ',' delimiter）。那一行是：…」。in_line：JSON Lines 的一行，只报列。"""
    if not e.doc.strip():
        return "文件是空的（多半是写到一半被中断了）"
    reason = _JSON_REASONS.get(e.msg, e.msg)
    if e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string"):
        reason += "——内容到这里就结束了，多半是写到一半被中断、文件被截断了"
    line = e.doc.split("\n")[e.lineno - 1].rstrip("\r")
    start = max(0, e.colno - 1 - 30)
    excerpt = ("…" if start else "") + line[start:e.colno - 1 + 30] + ("…" if len(line) > e.colno - 1 + 30 else "")
    where = f"第 {e.colno} 列" if in_line else f"第 {e.lineno} 行第 {e.colno} 列"
    return f"{where}：{reason}（{e.msg}）。那一行是：{excerpt!r}"


def read_json(path: str | os.PathLike, what: str = "文件", fix: str | None = None) -> Any:
    """读 JSON 文件。格式错误时报 ValueError：哪个文件、第几行第几列、错在哪，以及怎么重新生成（fix）。"""
    path = as_path(path, what)
    text = read_text_utf8(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} 不是合法的 JSON：{_json_problem(e)}。{fix or DEFAULT_FIX}") from None


def read_jsonl(path: str | os.PathLike, what: str = "文件", fix: str | None = None,
               line_numbers: bool = False) -> list:
    """读 JSON Lines（一行一个 JSON，空行跳过）。line_numbers=True 时返回 [(行号, 对象), ...]，方便报错时指出行号。

    格式错误时报 ValueError：哪个文件、第几行第几列、错在哪，以及怎么重新生成（fix）。
    """
    path = as_path(path, what)
    records = []
    # 按 \n、\r\n、\r 分行（和 open() 的文本模式一样）；不用 str.splitlines()：它还会在 JSON 字符串里合法的 U+2028 等字符处断行
    for n, line in enumerate(_NEWLINES.split(read_text_utf8(path, what, fix)), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} {path} 第 {n} 行不是合法的 JSON：{_json_problem(e, in_line=True)}。"
                             f"JSON Lines 文件的每一行必须是一个完整的 JSON。{fix or DEFAULT_FIX}") from None
        records.append((n, obj) if line_numbers else obj)
    return records


def _safetensors_problem(path: Path) -> tuple[bool, str]:
    """看看 path 的开头，猜它为什么读不出来：(是不是别的格式, 中文说明)。只在读取已经失败时调用。"""
    size = path.stat().st_size
    if size == 0:
        return False, "文件是空的（0 字节），多半是保存时被中断了"
    if size < 8:
        return False, f"文件只有 {size} 字节，连 8 字节的文件头长度都不完整：被截断了"
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little")  # safetensors 的前 8 个字节是文件头（JSON）的长度
        if n > 100_000_000:  # safetensors 自己也不接受超过 1 亿字节的文件头
            if head.startswith(b"PK\x03\x04"):
                return True, ("这是一个 zip 压缩包——torch.save 保存的 PyTorch 文件（例如 pytorch_model.bin）就是这种格式。"
                              "它里面是 pickle，加载时可能执行任意代码，course_lib 为了安全从不加载它")
            if head[0] == 0x80 and 2 <= head[1] <= 5:
                return True, ("这是一个 pickle 文件（旧版 torch.save 的格式）。pickle 加载时可能执行任意代码，"
                              "course_lib 为了安全从不加载它")
            return True, "开头 8 个字节不是合法的文件头长度"
        if 8 + n > size:
            return False, f"文件头说有 {n:,} 字节，整个文件却只有 {size:,} 字节：被截断了"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return False, "文件头不是合法的 safetensors 文件头：文件损坏了，或者根本不是 safetensors 文件"
    if 8 + n + end > size:
        return False, f"文件应有 {8 + n + end:,} 字节，实际只有 {size:,} 字节：被截断了（下载或保存没完成）"
    return False, "文件内容与文件头对不上"


def read_safetensors(path: str | os.PathLike, what: str = "权重文件", fix: str | None = None,
                     device: str = "cpu") -> dict:
    """读 safetensors 文件，返回 {名字: 张量}（张量直接放在 device 上）。

    safetensors 只存张量，读的时候不执行任何代码。文件找不到、被截断、根本不是 safetensors
    （例如改了扩展名的 pytorch_model.bin）时报中文错误：哪个文件、怎么回事、怎么办（fix）。
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = as_path(path, what)
    fix = fix or "请重新保存或重新下载这个文件。"
    if not path.is_file():
        _read_bytes(path, what, fix)  # 给出「找不到 / 是文件夹 / 没有权限」的中文错误
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as e:
        other_format, problem = _safetensors_problem(path)
        head = f"{what} {path} 不是 safetensors 文件" if other_format else f"{what} {path} 损坏或不完整，无法读取"
        raise ValueError(f"{head}：{problem}。{fix}（safetensors 的原始报错：{e}）") from None
