"""第 05 章：与 Hugging Face transformers 互通。

export_hf(model, folder)：把 course_lib 的 Llama 写成 Hugging Face 的 Llama 文件夹，之后任何人都能用
    AutoModelForCausalLM.from_pretrained(folder) / AutoTokenizer.from_pretrained(folder) 加载，logits 与原模型一致。
import_hf(folder)：反过来，把 Hugging Face 格式的 Llama 结构模型（例如联网下载的中文 Llama）读成 course_lib 的 Llama。

导出的文件夹：
    config.json             结构（HF 的字段名，见 hf_config）
    model.safetensors       权重（HF 的名字：course_lib 的名字前面加 "model."，lm_head 除外）
    generation_config.json  bos/eos/pad 的 id——没有 eos_token_id，HF 的 generate() 永远不会自己停
    tokenizer.json、tokenizer_config.json（+ chat_template.jinja）、tokenizer.model   只在给了 sp_model_path 时

两边的名字一一对应、RoPE 都用「前后两半」配对，所以权重原样复制，不需要任何重排。
导出只依赖 safetensors；只有导出分词器时才需要 transformers 和 sentencepiece。
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from .checks import check_float_dtype, check_int, check_shapes
from .device import get_device
from .files import as_path, atomic_folder, atomic_write_bytes, atomic_write_json, read_json, read_safetensors
from .llama import Llama, LlamaConfig
from .tokenizer import SPECIAL_TOKENS

EOT_PIECE, PAD_PIECE = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]  # <|endoftext|>、<|pad|>

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
# 模型文件夹里「属于模型」的文件：导出时整个换掉，绝不让上一次导出的分词器留在新权重旁边。其余条目（README.md 等）原样保留。
_MODEL_FILES = re.compile(r"(config|generation_config|special_tokens_map|added_tokens|preprocessor_config)\.json"
                          r"|tokenizer.*|chat_template\..*|vocab\..*|merges\.txt|.*\.model"
                          r"|.*\.safetensors(\.index\.json)?|pytorch_model.*\.bin(\.index\.json)?")
_REDOWNLOAD = "请重新下载这个模型，或者重新导出（export_hf）。"

# 导出分词器后用来核对「HF 分词结果 == sentencepiece 分词结果」的几句话（外加词表里的片段）
_PROBE_TEXTS = (
    "新华社北京１月１日电，国家主席江泽民发表了１９９８年新年讲话《迈向充满希望的新世纪》。",
    "这家酒店的服务很好，房间也干净！下次还会再来？",
    "画蛇添足：比喻做了多余的事，反而不恰当。",
    "Llama 2 模型有 70 亿个参数；GPU 显存 24GB。",
)


# ---------------------------------------------------------------- 导出
def hf_config(cfg: LlamaConfig, bos_id: int | None = None, eos_id: int | None = None,
              pad_id: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """course_lib 的 LlamaConfig → Hugging Face LlamaConfig 的 config.json 字段。

    transformers 5 把 rope_theta 放在 rope_parameters 里；同时写一份顶层的 rope_theta，4.x 也能读。
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "rope_theta": float(cfg.rope_theta),
        "tie_word_embeddings": cfg.tie_weights,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def to_hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """course_lib 的权重名 → HF 的权重名：前面加 "model."（lm_head 除外）。共享权重时不存 lm_head。"""
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            if model.config.tie_weights:
                continue  # HF 看到 tie_word_embeddings=true 会自己把 lm_head 绑到 embed_tokens 上
            tensors[name] = t
        else:
            tensors["model." + name] = t
    return {k: t.detach().cpu().contiguous() for k, t in tensors.items()}


def export_hf(model: Llama, folder: str | Path, sp_model_path: str | Path | None = None,
              bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
              chat_template: str | None = None, add_bos: bool | None = None) -> Path:
    """把 Llama 写成 Hugging Face 能直接加载的文件夹，返回文件夹路径。

    整个文件夹原子替换：先写进同级的临时文件夹，全部写完才换成 folder；中途出错（例如磁盘满了），
    folder 里原来的导出一个字节都不变。folder 里原有的模型文件（权重、config、分词器）整个换掉，
    别的文件（例如 README.md）保留。

    - sp_model_path：sentencepiece 的 .model 文件（BPE、byte_fallback、normalization_rule_name="identity"）。
      给了就同时导出分词器；bos_id / eos_id / pad_id 没给时取 sentencepiece 模型里的值；
      .model 里没有登记（课程的 BPE 分词器就是这样，见 tokenizer.py）时按课程的约定：
      <|endoftext|> 兼作 bos 和 eos，<|pad|> 是 pad。这样导出的 generation_config 里一定有 eos，HF 的 generate() 会停。
    - add_bos：HF 分词器编码时是否在开头加 BOS；None → 有 BOS 就加（和 Llama 2 一样）。
    - chat_template：Jinja 模板字符串，写进分词器（apply_chat_template 会用它）。
    导出后会核对 HF 分词器与 sentencepiece 的分词结果，不一致时报错。
    """
    if not isinstance(model, Llama):
        raise TypeError(f"export_hf 只能导出 course_lib.Llama，收到 {type(model).__name__}。"
                        "GPT 的结构（LayerNorm、可学习位置嵌入）和 HF 的 Llama 不同。")
    folder = as_path(folder, "导出的文件夹")
    sp = None
    if sp_model_path is not None:
        sp = _load_sentencepiece(sp_model_path)
        if sp.get_piece_size() > model.config.vocab_size:  # 模型的词表可以更大（有人补齐到 64 的倍数），不能更小
            raise ValueError(f"分词器有 {sp.get_piece_size()} 个 token，模型的 vocab_size 却只有 {model.config.vocab_size}。"
                             "请用训练这个模型时的那个 .model 文件。")
        given = (bos_id, eos_id, pad_id)
        in_model = (_sp_id(sp.bos_id()), _sp_id(sp.eos_id()), _sp_id(sp.pad_id()))
        bos_id, eos_id, pad_id = (g if g is not None else m if m is not None else c
                                  for g, m, c in zip(given, in_model, _course_special_ids(sp)))
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
        if check_int(value, name, 0, allow_none=True) is not None and not value < model.config.vocab_size:
            raise ValueError(f"{name}={value} 不在词表范围 [0, {model.config.vocab_size}) 里。")

    with atomic_folder(folder, keep=lambda name: not _MODEL_FILES.fullmatch(name)) as tmp:
        if sp is not None:  # 先导出分词器：它会核对分词结果，不合格时什么都不写
            add_bos = bos_id is not None if add_bos is None else add_bos
            export_tokenizer(sp_model_path, tmp, bos_id, eos_id, pad_id, chat_template, add_bos)
        dtype = model.embed_tokens.weight.dtype
        atomic_write_bytes(tmp / WEIGHTS, st_save(to_hf_state_dict(model), metadata={"format": "pt"}))
        atomic_write_json(tmp / "config.json", hf_config(model.config, bos_id, eos_id, pad_id, dtype))
        # 没有专门的 pad token 时用 eos 填充（HF 自己也会这样做，但每次都打印一条警告）
        generation = {"bos_token_id": bos_id, "eos_token_id": eos_id,
                      "pad_token_id": pad_id if pad_id is not None else eos_id}
        atomic_write_json(tmp / "generation_config.json", generation)
    return folder


def export_tokenizer(sp_model_path: str | Path, folder: str | Path, bos_id: int | None = None,
                     eos_id: int | None = None, pad_id: int | None = None,
                     chat_template: str | None = None, add_bos: bool = True) -> Path:
    """把 sentencepiece BPE 模型转成 HF 的 LlamaTokenizer 文件（tokenizer.json 等），写进 folder。

    词表和合并规则直接从 sentencepiece 读出（BPE 片段的 id 顺序就是合并的优先级），不需要 protobuf 包。
    sentencepiece 的控制符号和形如 <...> 的用户自定义符号（如 <|im_start|>）成为 HF 的特殊 token
    （decode(skip_special_tokens=True) 会去掉它们），其他用户自定义符号成为不拆分的普通 token。
    写完后重新加载一遍，在几句中文和词表片段上核对 id 与 sentencepiece 完全相同，不同就报错。

    已知差异（HF 的 Llama 分词器本身如此）：sentencepiece 默认 remove_extra_whitespaces=True，会删掉开头、
    结尾和连续的空格，HF 不删（课程的分词器关掉了这个选项，空格也完全一致）；文本里出现 "<s>" 这类特殊 token 的字符串时，HF 把它当成特殊 token。
    """
    try:
        import transformers
        from tokenizers import AddedToken
        from transformers import AutoTokenizer, LlamaTokenizer
        from transformers.tokenization_utils_base import generate_merges
    except ImportError:
        raise ImportError("导出分词器需要 transformers 5：pip install 'transformers>=5' sentencepiece") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise ImportError(f"导出分词器需要 transformers 5 或更新（这里是 {transformers.__version__}）："
                          "pip install -U 'transformers>=5'")
    folder = Path(folder)
    sp = _load_sentencepiece(sp_model_path)
    info = sentencepiece_info(sp)
    if info["model_type"] != "bpe":
        raise ValueError(f"{sp_model_path} 是 {info['model_type']} 分词器；HF 的 LlamaTokenizer 只能还原 BPE。"
                         "请用 model_type='bpe' 重新训练。")
    if info["normalization"] != "identity":
        raise ValueError(f"{sp_model_path} 用了 {info['normalization']!r} 规范化；HF 的 LlamaTokenizer 不做 Unicode 规范化，"
                         "分词结果会不同（例如 NFKC 把「，」变成「,」）。请用 normalization_rule_name='identity' 重新训练。")
    types = info["piece_types"]
    vocab = {sp.id_to_piece(i): i for i in range(len(types))}

    def piece(i):
        return None if i is None else sp.id_to_piece(i)

    tok = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), unk_token=piece(_sp_id(sp.unk_id())),
                         bos_token=piece(bos_id), eos_token=piece(eos_id), pad_token=piece(pad_id),
                         add_bos_token=add_bos, add_eos_token=False, add_prefix_space=info["add_dummy_prefix"])
    extra = [i for i, t in enumerate(types) if t in ("control", "user_defined") and i not in (bos_id, eos_id, pad_id)]
    tok.add_tokens([AddedToken(sp.id_to_piece(i), special=_is_special(sp.id_to_piece(i), types[i]),
                               normalized=False) for i in extra])
    if chat_template is not None:
        tok.chat_template = chat_template
    if len(tok) != len(types):
        raise ValueError(f"转换后的 HF 分词器有 {len(tok)} 个 token，sentencepiece 有 {len(types)} 个：特殊 token 的设置不一致。"
                         "请检查 bos_id / eos_id / pad_id 是不是这个 .model 里的 id。")
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        _check_tokenizer(AutoTokenizer.from_pretrained(tmp), sp, types)
        for path in sorted(Path(tmp).iterdir()):
            atomic_write_bytes(folder / path.name, path.read_bytes())
    # 原始的 sentencepiece 模型也放一份：不用 transformers 的人（或 llama.cpp 之类的工具）可以直接用
    atomic_write_bytes(folder / "tokenizer.model", Path(sp_model_path).read_bytes())
    return folder


def _is_special(piece: str, kind: str) -> bool:
    return kind == "control" or (piece.startswith("<") and piece.endswith(">"))


def _load_sentencepiece(path: str | Path):
    try:
        import sentencepiece as spm
    except ImportError:
        raise ImportError("需要 sentencepiece：pip install sentencepiece") from None
    path = as_path(path, "sentencepiece 模型")
    if not path.is_file():
        what = "它是一个文件夹" if path.is_dir() else "路径不存在"
        raise FileNotFoundError(f"找不到 sentencepiece 模型 {path}（{what}），请检查路径（应该是训练分词器时得到的 .model 文件）。")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{path} 不是 sentencepiece 模型文件，或者已经损坏（{str(e).strip()[:80]}）。"
                         "请传训练分词器时得到的 tokenizer.model。") from None


def _course_special_ids(sp) -> tuple[int | None, int | None, int | None]:
    """课程分词器约定的 (bos, eos, pad)：<|endoftext|> 兼作 bos 和 eos，<|pad|> 是 pad；.model 里没有这些片段时是 None。"""
    def find(piece: str) -> int | None:
        i = sp.piece_to_id(piece)  # 找不到时 sentencepiece 返回 unk 的 id，所以要再核对一遍
        return i if 0 <= i < sp.get_piece_size() and sp.id_to_piece(i) == piece else None
    eos = find(EOT_PIECE)
    return eos, eos, find(PAD_PIECE)


def _sp_id(i: int) -> int | None:
    return None if i < 0 else i  # sentencepiece 用 -1 表示「没有这个 token」


# sentencepiece 的 .model 文件是一条 protobuf 消息（ModelProto）。sentencepiece 的 Python 接口读不到
# 片段的类型、模型类型和空格设置，所以这里直接解析那几个字段，省得再装 protobuf 包。
_PIECE_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _proto_fields(data: bytes):
    """逐个产出 protobuf 消息里的 (字段号, 值)：varint 是 int，长度前缀的字段是 bytes。"""
    def varint(i):
        value, shift = 0, 0
        while True:
            b = data[i]
            value |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if b < 0x80:
                return value, i
    i = 0
    while i < len(data):
        key, i = varint(i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 2:
            n, i = varint(i)
            value, i = data[i:i + n], i + n
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i:i + size], i + size
        else:
            raise ValueError(f"无法解析 sentencepiece 模型（protobuf wire type {wire}），文件可能损坏。")
        yield field, value


def sentencepiece_info(sp) -> dict:
    """从 sentencepiece 模型里读出：model_type、每个片段的类型、normalization 规则和两个空格选项。"""
    info = {"model_type": "unigram", "piece_types": [], "normalization": "nmt_nfkc",
            "add_dummy_prefix": True, "remove_extra_whitespaces": True}   # 缺省值与 sentencepiece 相同
    for field, value in _proto_fields(sp.serialized_model_proto()):
        if field == 1:    # pieces：字段 3 是类型
            info["piece_types"].append(_PIECE_TYPES.get(dict(_proto_fields(value)).get(3, 1), "normal"))
        elif field == 2:  # trainer_spec：字段 3 是 model_type
            info["model_type"] = _MODEL_TYPES.get(dict(_proto_fields(value)).get(3, 1), "unigram")
        elif field == 3:  # normalizer_spec：1 规则名，3 add_dummy_prefix，4 remove_extra_whitespaces
            spec = dict(_proto_fields(value))
            info["normalization"] = spec.get(1, b"nmt_nfkc").decode()
            info["add_dummy_prefix"] = bool(spec.get(3, 1))
            info["remove_extra_whitespaces"] = bool(spec.get(4, 1))
    return info


def _check_tokenizer(tok, sp, types: list[str]) -> None:
    """在几句话和词表片段上核对 HF 分词器与 sentencepiece 的 id 完全相同。"""
    pieces = [sp.decode([i]) for i, t in enumerate(types) if t == "normal"]
    texts = list(_PROBE_TEXTS) + ["".join(pieces[j:j + 30]) for j in range(0, len(pieces), 30)]
    for text in texts:
        text = " ".join(text.split())  # 开头、结尾、连续的空格可能处理不同（见 export_tokenizer），核对时不放
        if not text:
            continue
        ours, theirs = tok(text, add_special_tokens=False)["input_ids"], sp.encode(text)
        if ours != theirs:
            raise ValueError(
                f"转换后的 HF 分词器与 sentencepiece 分词结果不同（{text[:20]!r}…：{ours[:8]} ≠ {theirs[:8]}）。"
                "这个 .model 用了 HF 的 LlamaTokenizer 还原不了的设置；请用 course_lib.tokenizer 的默认设置重新训练。")


# ---------------------------------------------------------------- 导入
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def config_from_hf(hf: dict, source: str = "config.json") -> LlamaConfig:
    """Hugging Face 的 config.json（dict）→ LlamaConfig；遇到 course_lib 的 Llama 表达不了的设置时报错。

    source：报错时怎么称呼这个 config（import_hf 传文件路径）。
    """
    if not isinstance(hf, dict):
        raise ValueError(f"{source} 应该是一个 JSON 对象（字段名 → 值），收到的是 {type(hf).__name__}。{_REDOWNLOAD}")
    if "hidden_size" not in hf and "config" in hf:
        raise ValueError("这是 course_lib.save_model 保存的文件夹，请用 course_lib.load_model 加载。")
    if hf.get("model_type") != "llama":
        raise ValueError(f"只支持 Llama 结构（config.json 里 model_type 为 'llama'），收到 {hf.get('model_type')!r}。"
                         "Qwen、ChatGLM 等结构细节不同（例如注意力有偏置），不能直接转换。")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"{source} 里的 rope_parameters / rope_scaling 应该是一个对象，收到 {rope!r:.40}。{_REDOWNLOAD}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"不支持 rope_type={rope_type!r} 的 RoPE 缩放（Llama 3.1 等长上下文模型用它）；"
                         "course_lib 的 Llama 只实现了原始的 RoPE（rope_type='default'）。")
    unsupported = {"hidden_act": hf.get("hidden_act", "silu") != "silu",
                   "attention_bias": bool(hf.get("attention_bias")), "mlp_bias": bool(hf.get("mlp_bias"))}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"config.json 里 {', '.join(f'{k}={hf.get(k)!r}' for k in bad)}，course_lib 的 Llama 不支持"
                         "（它用 silu 激活、没有偏置）。")
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        raise ValueError(f"{source} 缺少 Llama 结构必需的字段 {missing}（需要：{', '.join(_REQUIRED)}）："
                         f"文件不完整，或者被手工改过。{_REDOWNLOAD}")
    bad = [f"{k}={hf[k]!r}" for k in _REQUIRED if not isinstance(hf[k], int) or isinstance(hf[k], bool) or hf[k] <= 0]
    if bad:
        raise ValueError(f"{source} 里 {', '.join(bad)}：这些字段必须是正整数。{_REDOWNLOAD}")
    n_heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
        raise ValueError(f"head_dim={hf['head_dim']} 不等于 hidden_size / num_attention_heads = "
                         f"{hf['hidden_size'] // n_heads}，course_lib 的 Llama 不支持这种结构。")
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        hidden_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        tie_weights=bool(hf.get("tie_word_embeddings", False)),
    )


def import_hf(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Llama:
    """读取 Hugging Face 格式的 Llama 文件夹（config.json + model.safetensors 或分片的 safetensors）。

    dtype=None 时保持文件里的精度（例如 bf16）；也可以指定 torch.float32 等。
    模型先建在 "meta" 设备上（不占内存），再直接换上读进来的张量：7B 模型也不会占两份内存。
    """
    folder = as_path(folder, "import_hf 的模型文件夹")
    check_float_dtype(dtype)
    device = get_device(device) if device is not None else None  # "tpu"、没有 GPU 时的 "cuda"：一句中文错误
    if not folder.is_dir():
        what = "路径不存在" if not folder.exists() else "这是一个文件，不是文件夹"
        raise FileNotFoundError(f"找不到模型文件夹 {folder}（{what}）。import_hf 要的是 Hugging Face 的模型文件夹"
                                f"（config.json + {WEIGHTS}），请检查路径。")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} 里没有 config.json，不是 Hugging Face 的模型文件夹。")
    cfg = config_from_hf(read_json(folder / "config.json", "模型配置", _REDOWNLOAD), source=str(folder / "config.json"))
    tensors = {}
    for path in _weight_files(folder):
        for name, t in read_safetensors(path, "权重文件", _REDOWNLOAD, device=str(device)).items():
            if "rotary_emb" in name:  # 旧版 HF 检查点里存着 RoPE 的频率表；我们自己算
                continue
            t = t if dtype is None else t.to(dtype)
            tensors[name.removeprefix("model.")] = t
    if cfg.tie_weights:
        tensors.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Llama(cfg)
    check_shapes(model.state_dict(), tensors, "权重文件", "config.json", f"config.json 和权重不是同一个模型的。{_REDOWNLOAD}")
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and cfg.tie_weights)]
    if missing or unexpected:
        raise ValueError(f"权重与 config.json 描述的结构不符：缺少 {sorted(missing)[:5]}，多出 {sorted(unexpected)[:5]}。"
                         "请确认这是一个完整的 Llama 结构模型文件夹。")
    if cfg.tie_weights:
        model.lm_head.weight = model.embed_tokens.weight
    model.reset_rope(device)
    return model.eval()


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).exists():
        return [folder / WEIGHTS]
    if (folder / INDEX).exists():  # 大模型把权重切成几片，索引里写着每个张量在哪一片
        index = read_json(folder / INDEX, "分片索引", _REDOWNLOAD)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ValueError(f"{folder / INDEX} 里没有 \"weight_map\"（张量名 → 分片文件名）：文件不完整。{_REDOWNLOAD}")
        files = [folder / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise FileNotFoundError(f"{folder} 缺少 {INDEX} 里列出的分片 {absent[:5]}（共 {len(files)} 片）：下载没完成。"
                                    f"{_REDOWNLOAD}")
        return files
    pickles = sorted(p.name for p in folder.glob("pytorch_model*.bin"))
    if pickles:
        converted = str(folder) + "_safetensors"
        raise FileNotFoundError(
            f"{folder} 里只有 PyTorch 的 pickle 权重（{', '.join(pickles[:3])}），没有 {WEIGHTS}。import_hf 只读 safetensors："
            "pickle 文件加载时可以执行任意代码，course_lib 从不加载它。如果你信任这个模型的来源，"
            "可以在一个可信的环境里（例如一次性的容器或虚拟机）用 transformers 转换一次：\n"
            "    from transformers import AutoModelForCausalLM\n"
            f"    AutoModelForCausalLM.from_pretrained({str(folder)!r}).save_pretrained({converted!r}, safe_serialization=True)\n"
            f"然后 import_hf({converted!r})。")
    raise FileNotFoundError(f"{folder} 里没有 {WEIGHTS}（或分片的 {INDEX}）。import_hf 只读 safetensors；"
                            "只有 pytorch_model.bin 的模型，请先用 transformers 加载后 save_pretrained 转一次。")
