"""预训练数据管线（第 05 章）：语料 → 一个扁平的 uint16 token 文件（.bin）→ np.memmap → Trainer。

做法和 Baby-Llama2-Chinese 一样：
1. 逐篇分词，每篇文档后面接一个 eos（<|endoftext|>），告诉模型「这一篇到此为止」；
2. 所有 token 首尾相接写成**一个** .bin 文件，每个 id 占 2 个字节（uint16，所以词表不能超过 65536）；
3. 训练时用 np.memmap 打开：文件不整个读进内存，get_batch 随机截取窗口时才读那几页。

.bin 旁边有一个同名的 .json 元数据：token 数、文档数、dtype、分词器指纹（fingerprint）、文件的 sha256。
读取时逐项检查：文件被截断、内容被改动、或者换了分词器，都会给出能照着修的错误，而不是悄悄训练出垃圾。
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .data import corpus_documents
from .files import as_path, atomic_open, atomic_write_json, read_json
from .paths import runs_dir
from .report import progress_bar

FORMAT = "course_lib.token_bin"
FORMAT_VERSION = 1
DTYPE = np.uint16
MAX_VOCAB = 2 ** 16  # uint16 能存的 id：0…65535


def _check_tokenizer(tokenizer, who: str) -> None:
    if not hasattr(tokenizer, "fingerprint"):
        raise TypeError(f"{who} 需要 BPETokenizer（要用它的 eos_id 和 fingerprint），收到 {type(tokenizer).__name__}。")


def meta_path(path: str | os.PathLike) -> Path:
    """train.bin 的元数据文件：train.json。"""
    return Path(path).with_suffix(".json")


def build_token_bin(documents, tokenizer, path: str | os.PathLike, chunk_tokens: int = 1 << 20,
                    progress: bool = True) -> dict:
    """把 documents（str 的可迭代对象）分词后写成一个 uint16 .bin 文件，返回写进 .json 的元数据。

    每篇文档后面接一个 eos。边分词边写：内存里最多攒 chunk_tokens 个 token（默认约 100 万个，2 MB）。
    写入是原子的：先写同目录的临时文件，成功后才 os.replace 成 path；中途出错，旧文件原样保留。
    """
    if isinstance(documents, (str, bytes)):  # 逐个取出来的是一个个字符：每个字都会成为一篇「文档」
        unit = "个字符" if isinstance(documents, str) else "个字节"
        raise TypeError(f"build_token_bin 的 documents 应该是文档的列表（每个元素一篇 str），收到的却是一整个 "
                        f"{type(documents).__name__}（{len(documents):,} {unit}）：那样每个字符都会被当成一篇文档，"
                        "每个字后面都接一个 <|endoftext|>。请传 corpus_documents(语料, 划分) 的结果，"
                        "或者把整段文本拆成一行一篇：text.splitlines()。")
    if not hasattr(documents, "__iter__"):
        raise TypeError(f"build_token_bin 的 documents 应该是文档的列表（每个元素一篇 str），收到 {type(documents).__name__}。")
    _check_tokenizer(tokenizer, "build_token_bin")
    if tokenizer.vocab_size > MAX_VOCAB:
        raise ValueError(f"词表有 {tokenizer.vocab_size} 个 token，uint16 最多只能存 {MAX_VOCAB} 个 id。"
                         "请用 vocab_size ≤ 65536 重新训练分词器。")
    path = as_path(path, "token 文件")
    sha, n_tokens, n_documents, buffer = hashlib.sha256(), 0, 0, []
    with atomic_open(path) as f:
        for doc in progress_bar(documents, desc=f"分词 → {path.name}", unit="篇", enabled=progress):
            buffer.extend(tokenizer.encode(doc, eos=True))
            n_documents += 1
            if len(buffer) >= chunk_tokens:
                n_tokens += _write_ids(f, sha, buffer)
                buffer = []
        n_tokens += _write_ids(f, sha, buffer)
        if n_documents == 0:
            raise ValueError("documents 是空的：没有任何文档可以写进 token 文件。请检查语料。")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "dtype": "uint16", "n_tokens": n_tokens,
            "n_documents": n_documents, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
            "tokenizer_fingerprint": tokenizer.fingerprint, "sha256": sha.hexdigest()}
    atomic_write_json(meta_path(path), meta)
    return meta


def _write_ids(f, sha, ids: list[int]) -> int:
    """把一段 id 以 uint16 写进 f，同时更新 sha256；返回写了几个。"""
    data = np.asarray(ids, dtype=DTYPE).tobytes()
    f.write(data)
    sha.update(data)
    return len(ids)


def read_token_meta(path: str | os.PathLike) -> dict:
    """读取并检查 .bin 的元数据（不打开 .bin 本身）。"""
    path = as_path(path, "token 文件")
    if not path.exists():
        raise FileNotFoundError(f"找不到 token 文件 {path}。请先运行 build_token_bin(...) 或 prepare_pretraining_data(...) 生成它。")
    if not meta_path(path).exists():
        raise FileNotFoundError(f"{path} 旁边没有元数据文件 {meta_path(path).name}，无法确认它是用哪个分词器、按什么格式写的。"
                                "请用 build_token_bin(...) 重新生成（它会同时写 .bin 和 .json）。")
    regenerate = "请删除它和同名的 .bin，用 build_token_bin(...) 或 prepare_pretraining_data(...) 重新生成。"
    meta = read_json(meta_path(path), "token 文件的元数据", regenerate)
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path(path)} 应该是一个 JSON 对象，收到的是 {type(meta).__name__}。{regenerate}")
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path(path)} 不是本课程第 {FORMAT_VERSION} 版的 token 文件元数据"
                         f"（format={meta.get('format')!r}，version={meta.get('version')!r}）。请用 build_token_bin(...) 重新生成。")
    if meta.get("dtype") != "uint16":
        raise ValueError(f"{path} 的 dtype 是 {meta.get('dtype')!r}，这里只读 uint16。请用 build_token_bin(...) 重新生成。")
    missing = [k for k in ("n_tokens", "tokenizer_fingerprint", "sha256") if k not in meta]
    if missing or not isinstance(meta["n_tokens"], int) or isinstance(meta["n_tokens"], bool) or meta["n_tokens"] < 0:
        raise ValueError(f"{meta_path(path)} 不完整：缺少 {missing}，或者 n_tokens 不是非负整数。{regenerate}")
    return meta


def load_token_bin(path: str | os.PathLike, tokenizer=None, verify: bool = True) -> np.memmap:
    """以只读 np.memmap 打开 .bin，可以直接交给 get_batch / Trainer。

    检查：文件大小等于 token 数 × 2 字节（没被截断）；给了 tokenizer 时，指纹必须和生成文件时的一致；
    verify=True 时再核对整个文件的 sha256（1 GB 约需几秒；数据被改动或写到一半都能发现）。
    """
    path = as_path(path, "token 文件")
    if tokenizer is not None:
        _check_tokenizer(tokenizer, "load_token_bin 的 tokenizer")
    meta = read_token_meta(path)
    expected, actual = meta["n_tokens"] * np.dtype(DTYPE).itemsize, path.stat().st_size
    if actual != expected:
        raise ValueError(f"{path} 有 {actual:,} 字节，元数据说应有 {expected:,} 字节（{meta['n_tokens']:,} 个 token）："
                         "文件被截断或没写完。请删除它并用 build_token_bin(...) 重新生成。")
    if tokenizer is not None and tokenizer.fingerprint != meta["tokenizer_fingerprint"]:
        raise ValueError(f"{path} 是用另一个分词器生成的（指纹 {meta['tokenizer_fingerprint'][:12]}…），"
                         f"当前分词器的指纹是 {tokenizer.fingerprint[:12]}…。同一个 id 在两个词表里是不同的词片，不能混用。"
                         "请用当前分词器重新运行 build_token_bin(...) / prepare_pretraining_data(...)。")
    if verify and _file_sha256(path) != meta["sha256"]:
        raise ValueError(f"{path} 的内容与元数据记录的 sha256 不符：文件被改动过，或者写到一半被中断。"
                         "请删除它并用 build_token_bin(...) 重新生成。")
    return np.memmap(path, dtype=DTYPE, mode="r", shape=(meta["n_tokens"],))


def _file_sha256(path: Path, block: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            sha.update(chunk)
    return sha.hexdigest()


def prepare_pretraining_data(tokenizer, out_dir: str | os.PathLike | None = None, corpus: str = "mix",
                             overwrite: bool = False, progress: bool = True) -> dict[str, Path]:
    """把课程语料的 train / val 划分各写成一个 .bin，返回 {"train": 路径, "val": 路径}。

    文档来自 data.corpus_documents(corpus, split)：评论和成语的 test 划分不在其中，预训练模型没见过考题。
    out_dir 默认是 runs_dir()/tokens/<语料>_<分词器指纹前 12 位>，换了分词器自然写到新的文件夹。
    已有且与当前分词器匹配的文件直接复用（overwrite=True 时重建）。
    """
    _check_tokenizer(tokenizer, "prepare_pretraining_data")
    out_dir = Path(out_dir) if out_dir is not None else runs_dir() / "tokens" / f"{corpus}_{tokenizer.fingerprint[:12]}"
    paths = {}
    for split in ("train", "val"):
        path = paths[split] = out_dir / f"{split}.bin"
        if not overwrite and path.exists():
            try:
                load_token_bin(path, tokenizer)
                continue
            except (OSError, ValueError):
                pass  # 旧文件不能用（截断、换了分词器……）：下面重建
        build_token_bin(corpus_documents(corpus, split), tokenizer, path, progress=progress)
    return paths
