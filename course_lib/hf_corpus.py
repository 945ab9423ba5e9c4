"""在线大语料（可选，给有 GPU 的学习者）：把 Hugging Face 上的数据集流式读出来，写成第 05 章的 train.bin / val.bin。

课程自带的 course 语料只有约 1,500 万个 token，small、full 两档读 3 遍多就到头了（见 profiles.pretraining_budget）。
想用更多数据，例如中文维基百科（pleisto/wikipedia-cn-20230720-filtered；正文据数据集说明在 completion 字段，
这里没有联网核对过，读不到时错误信息会列出实际有的字段）：

1. 准备分词器：所有 .bin 都必须用**同一个**分词器生成和读取（同一个 id 在两个词表里是不同的词片）。
   可以用一次 python -m course_lib.train 训练出来的 目录/tokenizer，或者 BPETokenizer.train(...) 自己训练；
2. 流式读取、清洗、划分、分词（需要联网和 pip install datasets）：
       python -m course_lib.hf_corpus --dataset pleisto/wikipedia-cn-20230720-filtered --text_field completion \\
           --tokenizer data/runs/pretrain_small/tokenizer --out data/runs/tokens/wiki
3. 用这个文件夹训练（分词器从 目录/tokenizer 复制过去，读取时核对指纹）：
       python -m course_lib.train --profile small --out data/runs/pretrain_wiki --tokens data/runs/tokens/wiki

清洗与课程语料相同（data.normalize_text：全角数字字母转半角、压缩空白，中文标点不变，丢掉空文档）；
train / val 按每篇清洗后文本的 CRC32 哈希划分（data.split_of，与顺序无关，完全相同的两篇总在同一边）；
.bin 的格式就是 token_data.build_token_bin 写的那种（uint16，每篇后面接一个 eos，旁边有 .json 元数据）。
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

from .checks import check_int, check_number
from .data import normalize_text, split_of
from .files import as_path, atomic_write_json
from .token_data import build_token_bin, load_token_bin
from .tokenizer import BPETokenizer

TOKENIZER_DIR = "tokenizer"  # 输出文件夹里分词器的子文件夹
SOURCE_FILE = "source.json"  # 输出文件夹里记录数据来源和计数的文件


def _load_stream(dataset: str, split: str, config: str | None, streaming: bool, data_files):
    """datasets.load_dataset(...)；没装 datasets、读不到数据集时给出中文错误。"""
    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError("读取 Hugging Face 数据集需要 datasets 包：pip install datasets"
                                  "（或在仓库根目录 pip install -e \".[online]\"）。") from None
    try:
        return datasets.load_dataset(dataset, config, split=split, streaming=streaming, data_files=data_files)
    except Exception as e:  # 离线、名字拼错、split 不存在、本地文件找不到……
        raise RuntimeError(f"无法读取数据集 {dataset!r}（config={config!r}，split={split!r}，data_files={data_files!r}）："
                           f"{type(e).__name__}: {e}。请检查：是否联网（本地文件不需要）；数据集名字和 split 是否拼对；"
                           "有多个子集的数据集要用 config 指定一个。") from e


def _raw_text(rec, i: int, text_field: str) -> str | None:
    """第 i 条记录（从 0 数）的正文；没有这个字段、不是字符串时给出中文错误。"""
    if not isinstance(rec, dict) or text_field not in rec:
        fields = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise KeyError(f"第 {i + 1} 条记录没有字段 {text_field!r}（有：{fields}）。请用 text_field= "
                       "（命令行 --text_field）指定正文所在的字段，例如中文维基百科 pleisto/wikipedia-cn-20230720-filtered "
                       "的正文在 completion 字段。")
    value = rec[text_field]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"第 {i + 1} 条记录的 {text_field!r} 应该是字符串，收到 {type(value).__name__} {value!r:.40}。"
                         "请用 text_field= 指定正文（字符串）所在的字段。")
    return value


def clean_documents(records, text_field: str = "text", max_docs: int | None = None):
    """记录（dict）的可迭代对象 → 清洗后非空的文档（str）；最多 max_docs 篇（None = 全部），够数就停止读取。"""
    kept = 0
    for i, rec in enumerate(records):
        text = normalize_text(_raw_text(rec, i, text_field) or "")
        if not text:
            continue
        yield text
        kept += 1
        if max_docs is not None and kept >= max_docs:
            return


def prepare_hf_corpus(dataset: str, tokenizer, out_dir: str | os.PathLike, text_field: str = "text",
                      split: str = "train", config: str | None = None, max_docs: int | None = None,
                      val_fraction: float = 0.01, streaming: bool = True, data_files=None,
                      progress: bool = True) -> dict[str, Path]:
    """流式读取 Hugging Face 数据集，清洗、划分、分词，写成 out_dir/train.bin 和 out_dir/val.bin；返回 {"train", "val"} 的路径。

    - dataset、config、split、streaming、data_files 原样交给 datasets.load_dataset。split 是**数据集自己的**划分
      （维基百科只有 "train"）；课程的 train / val 由每篇文本的哈希决定：约 val_fraction 的文档进 val
      （必须是 0.01 的整数倍，≤ 0.5：data.split_of 按百分比分桶）。本地文件：dataset="json", data_files="文件.jsonl"。
    - tokenizer：BPETokenizer，或它保存的文件夹。它会被复制到 out_dir/tokenizer，训练时从那里读取、核对指纹。
    - max_docs：最多取多少篇（清洗后的非空文档，train + val 一起算）；None = 全部。先用几千篇试一遍再全量跑。
    - 只读一遍数据：train 边读边写进 .bin，val（只占一小部分）先攒在内存里，最后写。
    另外写 out_dir/source.json：数据来源、参数和两边的篇数、token 数，方便复现。
    """
    check_int(max_docs, "max_docs", allow_none=True)
    check_number(val_fraction, "val_fraction", 0.0, strict=True, high=0.5)
    val_percent = round(val_fraction * 100)
    if abs(val_fraction * 100 - val_percent) > 1e-9:
        raise ValueError(f"val_fraction 必须是 0.01 的整数倍（按百分比分桶），收到 {val_fraction!r}。例如 0.01 或 0.05。")
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"text_field 应该是正文所在字段的名字（非空字符串），收到 {text_field!r}。")
    if not isinstance(tokenizer, BPETokenizer):
        tokenizer = BPETokenizer.load(as_path(tokenizer, "分词器文件夹"))
    out_dir = as_path(out_dir, "输出文件夹")
    records = iter(_load_stream(dataset, split, config, streaming, data_files))
    first = next(records, None)
    if first is None:
        raise ValueError(f"数据集 {dataset!r}（split={split!r}）一条记录也没有。请检查数据集名字、split 和 data_files。")
    _raw_text(first, 0, text_field)  # 字段名不对：在开始分词（和显示进度条）之前就报
    records = itertools.chain([first], records)

    val_docs: list[str] = []
    n_train = 0

    def train_docs():
        nonlocal n_train
        for text in clean_documents(records, text_field, max_docs):
            if split_of("hf:" + text, val_percent) == "val":
                val_docs.append(text)
            else:
                n_train += 1
                yield text

    paths = {s: out_dir / f"{s}.bin" for s in ("train", "val")}
    try:
        train_meta = build_token_bin(train_docs(), tokenizer, paths["train"], progress=progress)
    except ValueError:
        if n_train:
            raise
        raise ValueError(f"数据集 {dataset!r} 里没有读到 train 的文档（val 有 {len(val_docs)} 篇）："
                         "请检查 text_field、max_docs 和 val_fraction。") from None
    if not val_docs:
        raise ValueError(f"按 val_fraction={val_fraction} 划分后 val 一篇文档也没有（train 有 {train_meta['n_documents']} 篇）："
                         "文档太少。请调大 max_docs 或 val_fraction。")
    val_meta = build_token_bin(val_docs, tokenizer, paths["val"], progress=False)
    tokenizer.save(out_dir / TOKENIZER_DIR)
    atomic_write_json(out_dir / SOURCE_FILE, {
        "dataset": dataset, "config": config, "split": split, "data_files": data_files, "text_field": text_field,
        "max_docs": max_docs, "val_fraction": val_fraction, "tokenizer_fingerprint": tokenizer.fingerprint,
        **{f"{s}_{k}": m[k] for s, m in (("train", train_meta), ("val", val_meta)) for k in ("n_documents", "n_tokens")}})
    return paths


def load_token_folder(folder: str | os.PathLike, verify: bool = True) -> tuple[BPETokenizer, dict[str, Path]]:
    """prepare_hf_corpus 写出的文件夹 → (分词器, {"train": 路径, "val": 路径})；检查两个 .bin 完整、是这个分词器写的。

    verify=True 时再核对两个文件的 sha256（1 GB 约几秒）。python -m course_lib.train --tokens 目录 用的就是它。
    """
    folder = as_path(folder, "token 文件夹")
    if not folder.is_dir():
        raise FileNotFoundError(f"找不到 token 文件夹 {folder}。请先运行 python -m course_lib.hf_corpus ... --out {folder}"
                                "（或 prepare_hf_corpus(...)）生成 train.bin、val.bin 和 tokenizer/。")
    if not (folder / TOKENIZER_DIR / BPETokenizer.MODEL_FILE).exists():
        raise FileNotFoundError(f"{folder} 里没有 {TOKENIZER_DIR}/{BPETokenizer.MODEL_FILE}：不知道这些 .bin 是用哪个分词器生成的。"
                                "请用 prepare_hf_corpus(...) 重新生成这个文件夹（它会把分词器一起存进去）。")
    tokenizer = BPETokenizer.load(folder / TOKENIZER_DIR)
    paths = {s: folder / f"{s}.bin" for s in ("train", "val")}
    for path in paths.values():
        load_token_bin(path, tokenizer, verify=verify)
    return tokenizer, paths


def main(argv: list[str] | None = None) -> int:
    """python -m course_lib.hf_corpus --dataset 名字 --tokenizer 分词器文件夹 --out 输出文件夹 [...]"""
    from .cli import ArgumentParser

    parser = ArgumentParser(prog="python -m course_lib.hf_corpus",
                            description="把 Hugging Face 数据集流式读出来、清洗、划分，写成第 05 章的 train.bin / val.bin"
                                        "（之后用 python -m course_lib.train --tokens 输出文件夹 训练）。需要 pip install datasets。")
    parser.add_argument("--dataset", required=True, help="数据集名字，例如 pleisto/wikipedia-cn-20230720-filtered；本地文件用 json")
    parser.add_argument("--tokenizer", required=True, help="分词器文件夹（BPETokenizer.save 的输出，例如 目录/tokenizer）")
    parser.add_argument("--out", required=True, help="输出文件夹：train.bin、val.bin、tokenizer/、source.json")
    parser.add_argument("--text_field", default="text", help="正文所在的字段（默认 text；中文维基百科是 completion）")
    parser.add_argument("--split", default="train", help="数据集自己的划分（默认 train）")
    parser.add_argument("--config", default=None, help="数据集的子集（有多个子集时必须指定）")
    parser.add_argument("--data_files", nargs="+", default=None, help="本地或数据集里的文件（配合 --dataset json 等使用）")
    parser.add_argument("--max_docs", type=int, default=None, help="最多取多少篇（默认全部）")
    parser.add_argument("--val_fraction", type=float, default=0.01, help="进 val 的比例，0.01 的整数倍（默认 0.01）")
    parser.add_argument("--no_streaming", action="store_true", help="先整个下载再读（默认流式读取）")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    data_files = args.data_files[0] if args.data_files and len(args.data_files) == 1 else args.data_files
    try:
        paths = prepare_hf_corpus(args.dataset, args.tokenizer, args.out, text_field=args.text_field, split=args.split,
                                  config=args.config, max_docs=args.max_docs, val_fraction=args.val_fraction,
                                  streaming=not args.no_streaming, data_files=data_files)
    except KeyboardInterrupt:
        print("\n已中断：已经写好的旧文件原样保留（写入是原子的），重新运行同一条命令即可。", file=sys.stderr)
        return 130
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"错误：{message}", file=sys.stderr)
        return 1
    print(f"写好了 {paths['train']} 和 {paths['val']}。训练：python -m course_lib.train --profile small "
          f"--out 目录 --tokens {paths['train'].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
