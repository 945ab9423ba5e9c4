"""分词器（tokenizer）。第 01–03 章用字符级 CharTokenizer：一个汉字就是一个 token。

第 05 章会在这里加上 sentencepiece BPE 分词器，接口相同：encode / decode / save / load。
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from .data import check_text
from .files import atomic_write_json, read_text_utf8

UNK = "\ufffd"  # �：Unicode 的「替换字符」，解码时看到它就知道这里原本是个没见过的字


class CharTokenizer:
    """字符级分词器。

    - 词表（vocabulary）= 语料里出现的字符；id 0 永远是未知字符 UNK（�）。
    - max_vocab：只保留最常见的 max_vocab-1 个字符（再加上 UNK），其余当作未知字符。
      tiny profile 用它把 4,600 个字缩到 3,000 个：覆盖 99.7% 的字符，模型小一截。
    - 编码时遇到词表外的字符：unknown="replace"（默认）→ 变成 UNK 的 id；
      unknown="error" → 报错并列出这些字符。
    """

    def __init__(self, chars: list[str]):
        if not chars or chars[0] != UNK:
            chars = [UNK] + [c for c in chars if c != UNK]
        if len(set(chars)) != len(chars):
            raise ValueError("词表里有重复的字符。")
        self.itos: list[str] = list(chars)
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}
        self.unk_id = 0

    @classmethod
    def from_text(cls, text: str, max_vocab: int | None = None) -> "CharTokenizer":
        check_text(text, "用来建词表的文本")
        counts = Counter(text)
        if max_vocab is not None:
            if max_vocab < 2:
                raise ValueError(f"max_vocab 至少是 2（UNK 加一个字符），收到 {max_vocab}。")
            keep = [c for c, _ in counts.most_common(max_vocab - 1)]
        else:
            keep = list(counts)
        return cls(sorted(keep))  # 按 Unicode 排序，id 与语料顺序无关

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, unknown: str = "replace") -> list[int]:
        if unknown not in ("replace", "error"):
            raise ValueError("unknown 只能是 'replace' 或 'error'。")
        if unknown == "error":
            missing = sorted({c for c in text if c not in self.stoi})
            if missing:
                raise ValueError(f"这些字符不在词表里：{''.join(missing[:20])}……（共 {len(missing)} 个）。"
                                 "用 unknown='replace' 把它们换成 UNK，或用包含它们的文本重建词表。")
        get = self.stoi.get
        return [get(c, 0) for c in text]

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        n = len(self.itos)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"id {bad[:5]} 超出了词表范围 [0, {n})。是不是用错了分词器？")
        return "".join(self.itos[i] for i in ids)

    def coverage(self, text: str) -> float:
        """text 里有多大比例的字符在词表内。"""
        return sum(c in self.stoi for c in text) / max(len(text), 1)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, {"type": "CharTokenizer", "version": 1, "chars": self.itos})

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        obj = json.loads(read_text_utf8(path))
        if obj.get("type") != "CharTokenizer":
            raise ValueError(f"{path} 不是 CharTokenizer 保存的文件（type={obj.get('type')!r}）。")
        return cls(obj["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
