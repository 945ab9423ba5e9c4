"""第 11 章：把课程的 Llama 导出成 GGUF——llama.cpp、ollama、LM Studio 读的单文件格式。

    python -m course_lib.gguf --model aligned --out data/runs/11_deploy/aligned-q8_0.gguf --type q8_0

一个 .gguf 文件 = 元数据（结构、分词器的词表和分数、特殊 token、对话模板）+ 每个权重张量。用 PyPI 的 gguf 包
（llama.cpp 项目自己的写入器）写，要注意三件事（见 ../shared/NOTES_LIBS.md 第 1 节）：

1. 权重名换成 llama.cpp 的（token_embd、blk.N.attn_q……），共享权重时不写 output；
2. q、k 的行要重排：课程（和 Hugging Face）的 RoPE 把每个头的前一半和后一半配对，llama.cpp 把相邻的两维配对；
3. 分词器：sentencepiece 的片段、分数和类型（四个特殊 token 标成 CONTROL），并且 add_space_prefix = False——
   否则 llama.cpp 会在每段文字前面加一个 ▁。

write_modelfile 在 .gguf 旁边写一个 ollama 的 Modelfile（对话模板、停止符、采样参数），`ollama create` 就能用。
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .chat_format import CHAT_TEMPLATE, DEFAULT_SYSTEM
from .files import as_path, atomic_write_text
from .llama import Llama

# 支持的权重类型：32 位浮点、16 位浮点、8 位和 4 位分块量化（每 32 个数共用一个 fp16 的缩放系数：
# q8_0 每个数 8.5 比特，q4_0 每个数 4.5 比特）
TYPES = ("f32", "f16", "q8_0", "q4_0")
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
QUANTIZED = ("q8_0", "q4_0")
BLOCK = 32                                 # q8_0 / q4_0 每块 32 个数：行长必须是它的倍数


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("导出 GGUF 需要 gguf 包（llama.cpp 项目的写入器）：pip install 'gguf>=0.19'，"
                          "或 pip install -e '.[deploy]'") from None
    return gguf


def permute_for_gguf(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q 或 k 的权重 (n_head·head_dim, dim)：每个头里的行从「前一半 | 后一半」配对，重排成「相邻两行」配对。

    课程的 apply_rope 把第 i 维和第 i + head_dim/2 维当成一对旋转；llama.cpp 的 llama 结构把第 2i、2i+1 维当成一对。
    把每个头的行排成 [0, h/2, 1, h/2+1, …]，两边算出的注意力就完全相同（transformers 读 GGUF 时会再排回来）。
    """
    rows = w.shape[0]
    if rows % (2 * n_head) != 0:
        raise ValueError(f"权重有 {rows} 行，不能平分给 {n_head} 个头、每头再分成两半：请检查 n_heads / n_kv_heads。")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model: Llama) -> dict[str, torch.Tensor]:
    """course_lib 的权重 → llama.cpp 的张量名（q、k 已重排；共享权重时没有 output.weight）。"""
    if not isinstance(model, Llama):
        raise TypeError(f"GGUF 导出只支持 course_lib.Llama（llama.cpp 的 llama 结构），收到 {type(model).__name__}。"
                        "GPT 的 LayerNorm 和可学习位置嵌入在 llama 结构里没有对应。")
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["embed_tokens.weight"], "output_norm.weight": sd["norm.weight"]}
    if not cfg.tie_weights:
        out["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            w = sd[f"layers.{i}.{ours}.weight"]
            if theirs == "attn_q":
                w = permute_for_gguf(w, cfg.n_heads)
            elif theirs == "attn_k":
                w = permute_for_gguf(w, cfg.n_kv_heads)
            out[f"blk.{i}.{theirs}.weight"] = w
    return out


def _check_blocks(tensors: dict[str, torch.Tensor], qtype: str) -> None:
    if qtype in QUANTIZED:
        bad = sorted({t.shape[-1] for t in tensors.values() if t.dim() == 2 and t.shape[-1] % BLOCK})
        if bad:
            raise ValueError(f"{qtype} 要求每行的长度是 {BLOCK} 的倍数，这个模型有长度 {bad} 的行：请用 f16 或 f32。")


def stored_weight(a: np.ndarray, qtype: str) -> np.ndarray:
    """一个 float32 权重在 qtype 的 GGUF 文件里存成什么：f16 是半精度数组；q8_0 / q4_0 是 gguf 包量化出的原始字节块
    （每行 = 若干块，每块 32 个数：2 字节的 fp16 缩放系数 + 32 个 8 位整数或 16 字节的 4 位整数）。"""
    gguf = _gguf()
    if qtype == "f32":
        return a
    if qtype == "f16":
        return a.astype(np.float16)
    return gguf.quants.quantize(a, getattr(gguf.GGMLQuantizationType, qtype.upper()))


def quantized_copy(model: Llama, qtype: str) -> Llama:
    """模型的一份拷贝，二维权重换成 qtype 的 GGUF 文件里存的值（量化再反量化；RMSNorm 的一维权重不变）。

    不用 llama.cpp 也能量出 GGUF 量化损失了多少质量：拿它和原模型比 logits、KL、每字比特数。
    它的 logits 与 transformers 读同一个 .gguf 文件得到的相同（第 11 章 notebook 核对）。
    """
    gguf = _gguf()
    if qtype not in TYPES:
        raise ValueError(f"不认识的 GGUF 权重类型 {qtype!r}：请用 {' / '.join(TYPES)} 之一。")
    if not isinstance(model, Llama):
        raise TypeError(f"quantized_copy 需要 course_lib.Llama，收到 {type(model).__name__}。")
    import copy
    _check_blocks(gguf_tensors(model), qtype)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.dim() != 2 or qtype == "f32":
                continue
            a = p.detach().float().cpu().numpy()
            stored = stored_weight(a, qtype)
            back = stored.astype(np.float32) if qtype == "f16" else gguf.quants.dequantize(
                stored, getattr(gguf.GGMLQuantizationType, qtype.upper()))
            p.copy_(torch.from_numpy(np.ascontiguousarray(back)).reshape(p.shape))
    return out


def _token_types(gguf, tokenizer) -> list[int]:
    from .hf import sentencepiece_info
    kinds = sentencepiece_info(tokenizer.sp)["piece_types"]
    special = set(tokenizer.special_tokens)
    T = gguf.TokenType
    types = []
    for i, kind in enumerate(kinds):
        piece = tokenizer.sp.id_to_piece(i)
        if kind == "unknown":
            types.append(T.UNKNOWN)
        elif piece in special or kind == "control":      # 课程的四个特殊 token 在 sentencepiece 里是 user_defined
            types.append(T.CONTROL)
        elif kind == "byte":
            types.append(T.BYTE)
        elif kind == "user_defined":
            types.append(T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
    return types


def export_gguf(model: Llama, tokenizer, out: str | Path, qtype: str = "f16", name: str = "course-llama",
                chat_template: str = CHAT_TEMPLATE) -> Path:
    """把 Llama + 课程的 BPETokenizer 写成一个 .gguf 文件，返回路径。

    qtype：f32 / f16（二维权重存 16 位）/ q8_0、q4_0（二维权重按 32 个一块量化成 8 位或 4 位整数，和 llama.cpp 的
    转换脚本一样 token_embd 也量化）；一维的 RMSNorm 权重总是 f32。先写同目录的临时文件，写完才换成 out：中途出错，旧文件不变。
    """
    gguf = _gguf()
    if qtype not in TYPES:
        raise ValueError(f"不认识的 GGUF 权重类型 {qtype!r}：请用 {' / '.join(TYPES)} 之一（f16 一般够用，q8_0 小一半、几乎不掉质量，q4_0 最小）。")
    from .tokenizer import BPETokenizer
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"GGUF 需要课程的 BPETokenizer（sentencepiece），收到 {type(tokenizer).__name__}。")
    cfg = model.config
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"分词器有 {tokenizer.vocab_size} 个 token，模型的 vocab_size 只有 {cfg.vocab_size}：不是一对。")
    tensors = gguf_tensors(model)
    _check_blocks(tensors, qtype)
    out = as_path(out, "GGUF 文件").expanduser()
    if out.suffix != ".gguf":
        raise ValueError(f"输出文件 {out} 应该以 .gguf 结尾（llama.cpp 和 ollama 按扩展名认文件）。")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")

    w = gguf.GGUFWriter(tmp, arch="llama")
    try:
        w.add_name(name)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.hidden_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[qtype]))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        sp = tokenizer.sp
        n = sp.get_piece_size()
        pieces = [sp.id_to_piece(i).encode("utf-8") for i in range(n)]
        scores = [float(sp.get_score(i)) for i in range(n)]
        types = _token_types(gguf, tokenizer)
        for i in range(n, cfg.vocab_size):              # 模型的词表比分词器大（补齐过）：多出来的位置占个位
            pieces.append(f"<unused{i}>".encode())
            scores.append(-1e9)
            types.append(gguf.TokenType.UNUSED)
        w.add_tokenizer_model("llama")                  # sentencepiece 式的 BPE（按分数合并）
        w.add_tokenizer_pre("default")
        w.add_token_list(pieces)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(tokenizer.bos_id)
        w.add_eos_token_id(tokenizer.eos_id)
        w.add_eot_token_id(tokenizer.im_end_id)         # 对话里一条回复的结尾：llama.cpp 生成到它就停
        w.add_unk_token_id(tokenizer.unk_id)
        w.add_pad_token_id(tokenizer.pad_id)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)                   # 课程的分词器不在开头加 ▁（NOTES_LIBS：必须写）
        w.add_chat_template(chat_template)

        for key, t in tensors.items():
            a = t.numpy().astype(np.float32)
            if a.ndim == 1 or qtype in ("f32", "f16"):
                w.add_tensor(key, a if a.ndim == 1 else stored_weight(a, qtype))
            else:
                w.add_tensor(key, stored_weight(a, qtype), raw_dtype=getattr(gguf.GGMLQuantizationType, qtype.upper()))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


# ---------------------------------------------------------------- ollama
# ollama 的模板是 Go 的 text/template，不是 Jinja：这里写出与 CHAT_TEMPLATE 相同的 ChatML 文本
# （唯一的差别：课程的模板会把内容里的 "<|" 改写成 "< |"，防止用户伪造特殊 token；Go 模板里没有这一步）。
OLLAMA_TEMPLATE = ("<|endoftext|>{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                   "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")


def modelfile_text(gguf_name: str, system: str | None = DEFAULT_SYSTEM, temperature: float = 0.7, top_p: float = 0.9,
                   repeat_penalty: float = 1.1, num_ctx: int = 256) -> str:
    """ollama 的 Modelfile：FROM 同一文件夹里的 .gguf、对话模板、停止符和采样参数（与 python -m course_lib.chat 的默认值相同）。"""
    lines = ["# ollama create course-llama -f Modelfile   （在这个文件夹里运行；之后 ollama run course-llama）",
             f"FROM ./{gguf_name}",
             f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
             'PARAMETER stop "<|im_end|>"',
             'PARAMETER stop "<|endoftext|>"',
             f"PARAMETER temperature {temperature}",
             f"PARAMETER top_p {top_p}",
             f"PARAMETER repeat_penalty {repeat_penalty}",
             f"PARAMETER num_ctx {num_ctx}"]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: str | Path, num_ctx: int | None = None, **kwargs) -> Path:
    """在 gguf_path 旁边写 Modelfile（原子写入），返回它的路径。num_ctx 默认取 GGUF 里的上下文长度。"""
    gguf_path = as_path(gguf_path, "GGUF 文件")
    if not gguf_path.is_file():
        raise FileNotFoundError(f"找不到 {gguf_path}：先用 export_gguf（或 python -m course_lib.gguf）导出。")
    if num_ctx is None:
        num_ctx = int(read_metadata(gguf_path)["llama.context_length"])
    return atomic_write_text(gguf_path.parent / "Modelfile", modelfile_text(gguf_path.name, num_ctx=num_ctx, **kwargs))


def read_metadata(path: str | Path) -> dict:
    """读出 .gguf 的标量元数据（结构、特殊 token、模板……；词表这类长数组略去）和张量清单 {名字: (形状, 类型)}。"""
    gguf = _gguf()
    path = as_path(path, "GGUF 文件")
    if not path.is_file():
        raise FileNotFoundError(f"找不到 GGUF 文件 {path}。")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} 不是有效的 GGUF 文件（{str(e)[:80]}）。请重新导出。") from None
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or len(field.data) != 1:
            continue
        value = field.parts[field.data[0]]
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            meta[key] = bytes(value).decode("utf-8")
        else:
            meta[key] = value.tolist()[0] if hasattr(value, "tolist") else value
    meta["tensors"] = {t.name: (tuple(int(d) for d in reversed(t.shape.tolist())), t.tensor_type.name)
                       for t in reader.tensors}
    return meta


if __name__ == "__main__":
    from course_lib.cli.gguf import main
    raise SystemExit(main())
