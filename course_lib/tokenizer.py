"""分词器（tokenizer）。第 01–03 章用字符级 CharTokenizer：一个汉字就是一个 token。

第 05 章的 BPETokenizer（sentencepiece BPE，带字节回退）接口相同：encode / decode / save / load。
"""
from __future__ import annotations

import hashlib
import io
import operator
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .checks import check_int, check_number, token_ids
from .data import check_text
from .files import as_path, atomic_folder, atomic_write_bytes, atomic_write_json, check_utf8, read_json

UNK = "\ufffd"  # �：Unicode 的「替换字符」，解码时看到它就知道这里原本是个没见过的字


def _check_encode_input(text) -> None:
    """encode 的输入必须是能编码成 UTF-8 的 str：bytes、落单的代理字符都给出中文错误。"""
    if not isinstance(text, str):
        raise TypeError(f"encode 需要 str，收到的是 {type(text).__name__}。若是 bytes，请先用 decode_utf8() 解码。")
    check_utf8(text, "要编码的文本")


class CharTokenizer:
    """字符级分词器。

    - 词表（vocabulary）= 语料里出现的字符；id 0 永远是未知字符 UNK（�）。
    - max_vocab：只保留最常见的 max_vocab-1 个字符（再加上 UNK），其余当作未知字符。
      tiny profile 用它把 4,600 个字缩到 3,000 个：覆盖 99.7% 的字符，模型小一截。
    - 编码时遇到词表外的字符：unknown="replace"（默认）→ 变成 UNK 的 id；
      unknown="error" → 报错并列出这些字符。
    """

    def __init__(self, chars: list[str]):
        try:
            chars = list(chars)
        except TypeError:
            chars = None
        if chars is None or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError("CharTokenizer 的词表应该是单个字符组成的列表，例如 ['中', '国']；"
                             "要从文本建词表，请用 CharTokenizer.from_text(文本)。")
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
        if check_int(max_vocab, "max_vocab", None, allow_none=True) is not None:
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
        _check_encode_input(text)
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
        ids = token_ids(ids, "要解码的 token id")
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
        fix = "请用 CharTokenizer.from_text(文本) 重新建词表并 save()，或从备份恢复这个文件。"
        obj = read_json(path, "分词器文件", fix)
        kind = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        if kind != "CharTokenizer":
            raise ValueError(f"{path} 不是 CharTokenizer 保存的文件（type={kind!r}）。")
        chars = obj.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise ValueError(f"{path} 里的 \"chars\" 应该是字符组成的列表，文件不完整或被改坏了。{fix}")
        return cls(chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ---------------------------------------------------------------- 第 05 章：BPE 分词器
# 特殊 token 的 id 是固定的（下面的顺序就是 id），第 06–07 章的对话模板现在就预留好：
#   0  <unk>          sentencepiece 必须有；开了字节回退后 encode 永远不会产生它
#   1  <|endoftext|>  eos：预训练数据里每篇文档后面接一个；同时兼作 bos（GPT-2、Qwen 的做法）
#   2  <|pad|>        填充：把不同长度的样本补齐（第 06 章）；与 eos 分开，按 pad 屏蔽损失不会误伤真正的 eos
#   3  <|im_start|>   对话模板（ChatML）里一条消息的开头
#   4  <|im_end|>     对话模板里一条消息的结尾
#   5–260             256 个字节 token <0x00>…<0xFF>（字节回退用）
#   261 起            BPE 学到的词片和单字
UNK_PIECE = "<unk>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
N_BYTE_TOKENS = 256
N_RESERVED = 1 + len(SPECIAL_TOKENS) + N_BYTE_TOKENS  # 261 个 id 不由语料决定
MAX_VOCAB_UINT16 = 2 ** 16  # token 文件用 uint16 存 id：id 最大 65535
WS = "\u2581"  # ▁：sentencepiece 内部用它表示空格


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise ModuleNotFoundError("BPETokenizer 需要 sentencepiece：pip install sentencepiece") from None
    return sentencepiece


def _training_lines(texts) -> list[str]:
    """把一段文本或一批文档拆成一行一条（sentencepiece 按行训练），丢掉空行。"""
    if isinstance(texts, str):
        texts = [texts]
    elif not hasattr(texts, "__iter__"):
        check_text(texts, "训练分词器的文本")  # 给出「应该是 str（或 str 的列表）」的中文错误
    lines = []
    for text in texts:
        if not isinstance(text, str):
            check_text(text, "训练分词器的文档")  # 给出「应该是 str」的中文错误
        lines.extend(line for line in text.splitlines() if line.strip())
    if not lines:
        check_text("", "训练分词器的文本")
    return lines


class BPETokenizer:
    """sentencepiece BPE 分词器（第 05 章）。接口和 CharTokenizer 一样：encode / decode / save / load。

    >>> tok = BPETokenizer.train(load_corpus("mix", "train"), runs_dir() / "tokenizer", vocab_size=6400)
    >>> tok.decode(tok.encode("你好，世界！")) == "你好，世界！"
    True

    - 任何文本都能编码：词表里没有的字（emoji、生僻字）拆成 UTF-8 字节 token，永远不出现 <unk>。
    - decode(encode(x)) == x 逐字符成立（中文、英文、数字、全角标点、空格、换行）。唯一的例外是字符
      「▁」（U+2581）本身：sentencepiece 用它表示空格，所以它解码回来是空格。
    - 特殊 token 的 id 固定（见本文件里 SPECIAL_TOKENS 上方的表）。它们是 sentencepiece 的
      「用户自定义符号」：文本里出现 "<|im_start|>" 就编码成一个 id，解码时原样写回——和 Hugging Face
      分词器对特殊 token 的默认处理一致。所以第 06 章拼对话模板时，用户输入里的这些字符串要先去掉。
    - fingerprint：tokenizer.model 文件内容的 sha256。token 文件记下它，换了分词器就拒绝读取。
    """

    MODEL_FILE = "tokenizer.model"
    META_FILE = "tokenizer_meta.json"  # 不叫 tokenizer.json：那是 Hugging Face 分词器的文件名

    def __init__(self, model_proto: bytes, meta: dict | None = None):
        if not isinstance(model_proto, (bytes, bytearray)):
            raise TypeError(f"BPETokenizer(model_proto) 要的是 tokenizer.model 文件的内容（bytes），收到 {type(model_proto).__name__}。"
                            "读取保存过的分词器请用 BPETokenizer.load(文件夹)，训练新的请用 BPETokenizer.train(文本)。")
        spm = _import_sentencepiece()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"无法解析 sentencepiece 模型（{e}）。文件可能已损坏，请重新训练或重新保存分词器。") from None
        expected = (UNK_PIECE,) + SPECIAL_TOKENS
        found = tuple(self.sp.id_to_piece(i) for i in range(min(len(expected), self.sp.get_piece_size())))
        if found != expected:
            raise ValueError(f"这个 sentencepiece 模型的前 {len(expected)} 个 token 是 {found}，应为 {expected}。"
                             "它不是 BPETokenizer.train() 训练的，请用 BPETokenizer.train() 重新训练。")
        self.model_proto = bytes(model_proto)
        self.fingerprint = hashlib.sha256(self.model_proto).hexdigest()
        self.meta = dict(meta or {})

    # ------------------------------------------------------------ 训练
    @staticmethod
    def min_vocab_size(texts, character_coverage: float = 0.995) -> int:
        """用 texts 训练时 vocab_size 的下限：261 个固定 id + 覆盖率所需的字符数（外加 ▁）。

        与 sentencepiece 的算法相同：按出现次数从多到少取字符，直到累计覆盖 character_coverage。
        """
        counts = Counter()
        for line in _training_lines(texts):
            counts.update(line)
        if " " in counts:
            counts[WS] += counts.pop(" ")  # sentencepiece 先把空格换成 ▁ 再数
        total, covered, kept = sum(counts.values()), 0, {WS}  # ▁ 总在词表里（见 train 的 required_chars）
        for char, n in counts.most_common():
            # sentencepiece 用 float32 比较覆盖率；这里照做，边界上的字符数才一致
            if np.float32(covered / total) >= np.float32(character_coverage):
                break
            covered += n
            kept.add(char)
        return N_RESERVED + len(kept)

    @classmethod
    def train(cls, texts, folder: str | Path | None = None, vocab_size: int = 6400,
              character_coverage: float = 0.995) -> "BPETokenizer":
        """在 texts（一段文本，或一批文档）上训练 BPE 分词器；folder 不是 None 时保存到那里。

        每个选项都是有意的选择：
        - model_type="bpe"：从单字出发，反复合并最常见的相邻一对（本章手写的算法）。
        - byte_fallback=True：词表外的字拆成 UTF-8 字节（一个汉字 3 个字节 token），不会有 <unk>。
        - normalization_rule_name="identity"：不做 Unicode 规范化。默认的 NFKC 会把全角的「，：（」
          变成半角的「,:(」，中文文本的标点就被改了，解码也回不到原文。语料在 data.py 里已经清洗过
          （全角数字、字母转半角，中文标点保持全角），分词器不再改动文本。
        - add_dummy_prefix=False、remove_extra_whitespaces=False：不在开头补空格、不压缩空格，
          保证 decode(encode(x)) == x。
        - split_digits=True：数字一位一个 token（Llama、Qwen 也这么做），多位数的算术更规整。
        - character_coverage=0.995：出现次数占 99.5% 的常见字各占一个 id，更罕见的字用字节表示。
          sentencepiece 的默认值 0.9995 适合几万的大词表：mix 语料有 7,877 种字符，0.9995 要留
          6,102 个单字，6400 的词表只剩 37 次合并，压缩率 1.05 字/token，和字符级几乎一样。0.995 留
          3,855 个单字、2,284 次合并：1.27 字/token，验证集里只有 3% 的 token 是字节。（0.99 时
          1.28 字/token，但字节 token 多到 5%。）sentencepiece 要求它在 [0.98, 1] 之间。
        - required_chars="▁"：空格在 sentencepiece 里写作 ▁。▁ 若没进词表，空格会被字节回退成 ▁ 的
          三个字节，解码出的是「▁」而不是空格。
        - num_threads=1、input_sentence_size=0（用全部行、不随机抽样）：多线程对 BPE 训练几乎没有提速（实测），
          而线程数会写进模型文件；固定它，同一份语料、同一版 sentencepiece 在任何机器上训练出逐字节相同的
          文件（fingerprint 相同）。
        - max_sentence_length：sentencepiece 默认悄悄丢掉超过 4192 字节的行，这里设成最长一行的长度。
        """
        check_int(vocab_size, "vocab_size", None)
        check_number(character_coverage, "character_coverage")
        if not 0.98 <= character_coverage <= 1.0:
            raise ValueError(f"character_coverage 必须在 [0.98, 1.0] 之间（sentencepiece 的要求），收到 {character_coverage}。")
        if vocab_size > MAX_VOCAB_UINT16:
            raise ValueError(f"vocab_size={vocab_size} 超过 {MAX_VOCAB_UINT16}：token id 存不进 uint16 的 .bin 文件。"
                             "请用不超过 65536 的词表（中文小模型 6400–32000 就够了）。")
        lines = _training_lines(texts)
        minimum = cls.min_vocab_size(lines, character_coverage)
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size={vocab_size} 太小，至少要 {minimum}：{N_BYTE_TOKENS} 个字节 token + "
                f"{N_RESERVED - N_BYTE_TOKENS} 个特殊 token + 覆盖 {character_coverage:.2%} 字符所需的 "
                f"{minimum - N_RESERVED} 个单字。请把 vocab_size 调到 ≥ {minimum}，或调低 character_coverage（最低 0.98）。")
        options = dict(
            model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=character_coverage,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            split_digits=True, required_chars=WS,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, user_defined_symbols=list(SPECIAL_TOKENS),
            num_threads=1, input_sentence_size=0,
            max_sentence_length=max(4192, max(len(line.encode("utf-8")) for line in lines)),
            minloglevel=2,  # 只显示错误，不刷屏
        )
        spm = _import_sentencepiece()
        buffer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer, **options)
        except RuntimeError as e:
            raise RuntimeError(f"sentencepiece 训练失败：{e}\n常见原因：语料太小，学不出 vocab_size={vocab_size} 个词片。"
                               "请减小 vocab_size 或换更大的语料。") from None
        meta = {"training": {"options": {k: v for k, v in options.items() if k != "user_defined_symbols"},
                             "n_lines": len(lines), "n_chars": sum(len(line) for line in lines)}}
        tok = cls(buffer.getvalue(), meta)
        if folder is not None:
            tok.save(folder)
        return tok

    # ------------------------------------------------------------ 编码与解码
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    # 固定的特殊 id（__init__ 检查过模型里这些位置确实是对应的词片）
    unk_id = 0       # <unk>：字节回退让它永远不会出现在 encode 的结果里
    eos_id = 1       # <|endoftext|>：文档结束；生成到它就停
    bos_id = 1       # 与 eos 是同一个 token（GPT-2、Qwen 的约定）：上一篇的结尾就是下一篇的开头
    pad_id = 2       # <|pad|>：把样本补齐到同样长度
    im_start_id = 3  # <|im_start|>：对话里一条消息的开头（第 06 章）
    im_end_id = 4    # <|im_end|>：对话里一条消息的结尾（第 06 章）

    @property
    def special_tokens(self) -> dict[str, int]:
        return {self.id_to_piece(i): i for i in range(1 + len(SPECIAL_TOKENS))}

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """文本 → token id 列表。bos/eos=True 时在开头/结尾加上 <|endoftext|>。"""
        if not isinstance(text, str):
            _check_encode_input(text)
        try:
            ids = self.sp.encode(text)
        except RuntimeError:  # sentencepiece 对落单的代理字符只报「Unable to cast Python instance」
            _check_encode_input(text)
            raise
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids) -> str:
        """token id → 文本。ids 可以是列表、torch 张量或 numpy 数组（例如 .bin 文件里的一段）。"""
        ids = token_ids(ids, "要解码的 token id")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[:5]} 超出了词表范围 [0, {self.vocab_size})。是不是用错了分词器？")
        return self.sp.decode(ids)

    def id_to_piece(self, i: int) -> str:
        """一个 id 对应的词片，例如 '中国'、'<0xE4>'（字节）、'▁'（空格）。"""
        try:
            i = operator.index(i)
        except TypeError:
            raise ValueError(f"id_to_piece 要的是一个整数 id，收到 {type(i).__name__} {i!r:.30}。") from None
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"id {i} 超出了词表范围 [0, {self.vocab_size})。")
        return self.sp.id_to_piece(i)

    def chars_per_token(self, text: str) -> float:
        """平均每个 token 代表几个字符（越大，同样的上下文长度装下的文字越多）。CharTokenizer 恰好是 1。"""
        check_text(text, "用来统计的文本")
        return len(text) / len(self.encode(text))

    # ------------------------------------------------------------ 保存与读取
    def save(self, folder: str | Path) -> Path:
        """写 folder/tokenizer.model 和 folder/tokenizer_meta.json，返回 folder。

        两个文件一起换上（atomic_folder）：写到一半出错，文件夹里仍是旧的那一对；同一文件夹里的其他文件（例如模型）原样保留。
        """
        folder = as_path(folder, "分词器文件夹")
        meta = {"type": "BPETokenizer", "version": 1, "vocab_size": self.vocab_size,
                "sha256": self.fingerprint, "special_tokens": self.special_tokens,
                "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "unk_id": self.unk_id,
                "im_start_id": self.im_start_id, "im_end_id": self.im_end_id,
                "sentencepiece_version": _import_sentencepiece().__version__,
                "training": self.meta.get("training")}  # 训练时的选项和语料规模，方便复现
        with atomic_folder(folder, keep=lambda name: name not in (self.MODEL_FILE, self.META_FILE)) as tmp:
            atomic_write_bytes(tmp / self.MODEL_FILE, self.model_proto)
            atomic_write_json(tmp / self.META_FILE, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "BPETokenizer":
        """读取 save() 保存的分词器，并用 sha256 检查模型文件没有损坏、没有被换掉。"""
        folder = as_path(folder, "分词器文件夹")
        model_path, meta_path = folder / cls.MODEL_FILE, folder / cls.META_FILE
        for path in (model_path, meta_path):
            if not path.exists():
                raise FileNotFoundError(f"找不到 {path}。请检查文件夹是否正确，"
                                        "或先用 BPETokenizer.train(文本, 文件夹) 训练并保存分词器。")
        meta = read_json(meta_path, "分词器的元数据", "请重新训练分词器（BPETokenizer.train(文本, 文件夹)），"
                         f"或从备份恢复 {cls.MODEL_FILE} 和 {cls.META_FILE}（它们必须一起复制）。")
        kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        if kind != "BPETokenizer":
            raise ValueError(f"{meta_path} 不是 BPETokenizer 保存的文件（type={kind!r}）。")
        data = model_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise ValueError(f"{model_path} 的 sha256 与 {meta_path} 里记录的不一致：文件损坏或被替换了。"
                             "请重新训练分词器，或从备份恢复这两个文件（它们必须一起复制）。")
        return cls(data, meta)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]})"
