"""第 09 章：读取一个能对话的模型——课程自己的格式、Hugging Face 格式，或第 06 章的 SFT 模型（默认）。

    load_chat_model()                    # 第 06 章的 SFT 模型（90 秒的小雁）
    load_chat_model(chat_model_dir())    # 课程发布的参考对话模型 assets/chat_model（同一配方，训练得长得多）
    load_chat_model("assets/chat_model") # 同上：仓库里的相对路径在别的工作目录下也能找到
    load_chat_model("aligned")           # 第 10 章 DPO 对齐后的模型（data/runs/10_alignment/model）；"chat" = 参考对话模型
"""
from __future__ import annotations

from pathlib import Path

import torch

from .device import get_device
from .files import as_path, read_json
from .paths import repo_root

CHAT_MODEL_DIR = "assets/chat_model"   # 参考对话模型在仓库里的位置（python -m course_lib.reference --chat 发布到这里）
ALIGNED_MODEL_DIR = "data/runs/10_alignment/model"   # 第 10 章 notebook 把 DPO 对齐后的模型存在这里
# --model 的简称（聊天命令行、成绩单、load_chat_model 都认）：简称 → (仓库里的位置, 缺了时怎么办)
MODEL_ALIASES = {
    "chat": (CHAT_MODEL_DIR, "参考对话模型", "它随仓库一起发布：git checkout assets/chat_model 可以恢复。"),
    "aligned": (ALIGNED_MODEL_DIR, "第 10 章 DPO 对齐后的模型",
                "先运行第 10 章 notebooks/10_alignment.ipynb（tiny 约 3 分钟），它会把对齐后的模型存到这里。"),
}


def chat_model_dir() -> Path:
    """课程发布的参考对话模型所在的文件夹（仓库里的 assets/chat_model）。"""
    root = repo_root()
    if root is None:
        raise FileNotFoundError(f"找不到课程仓库，也就找不到 {CHAT_MODEL_DIR}。请在课程仓库里 pip install -e . 后使用。")
    return root / CHAT_MODEL_DIR


def resolve_alias(name) -> Path | None:
    """--model 的简称（"chat"、"aligned"）→ 仓库里的文件夹；不是简称（或同名的本地文件夹存在）时返回 None。
    简称指向的模型还没有时给出中文错误，说明怎么得到它。"""
    if not isinstance(name, str) or name not in MODEL_ALIASES or Path(name).exists():
        return None
    where, _, how = MODEL_ALIASES[name]
    root = repo_root()
    if root is None:
        raise FileNotFoundError(f"找不到课程仓库，也就找不到 {name}（{where}）。请在课程仓库里 pip install -e . 后使用。")
    folder = root / where
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"还没有 {name} 模型（{where} 里没有 config.json）。{how}")
    return folder


def _is_reference_chat(folder: Path) -> bool:
    root = repo_root()
    return root is not None and folder.resolve() == (root / CHAT_MODEL_DIR).resolve()


def _is_course_folder(meta: dict) -> bool:
    return isinstance(meta.get("config"), dict) and meta.get("model_type") in ("llama", "gpt")


def load_chat_model(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """读取一个能对话的模型，返回 (model, tokenizer, 说明)。

    - path=None：第 06 章的 SFT 模型（course_lib.sft.load_sft_model，缺失时它会自动训练一个）；
      sft 模块不可用时，退回参考基座模型（它没学过对话，回答不会像样）。
    - path 是简称 "chat"（参考对话模型）或 "aligned"（第 10 章对齐后的模型）：用仓库里对应的文件夹，说明是简称的全名；
    - path 是相对路径、在当前目录下不存在、但在课程仓库的根目录下存在（例如在 notebooks/ 里写 "assets/chat_model"）：
      用仓库里的那个。
    - path 是 course_lib 保存的文件夹（save_model 的 config.json + model.safetensors，分词器在同一文件夹或其
      tokenizer/ 子文件夹）：读成 course_lib 的 Llama + BPETokenizer。
    - path 是 Hugging Face 格式的文件夹（export_hf 导出的，或下载好的 Qwen2.5-0.5B-Instruct）：用 transformers 读。
    - path 不是本地文件夹、形如 "组织/模型名"：当作 Hugging Face Hub 上的模型名，用 transformers 下载（需要联网）。
    - 两种格式都不是：报中文错误。
    """
    device = get_device(device) if device is not None else None  # "tpu"、没有 GPU 时的 "cuda"：一句中文错误
    if path is None:
        return _load_default(device)
    alias = resolve_alias(path)
    if alias is not None:
        model, tokenizer, _ = load_chat_model(alias, device)
        return model, tokenizer, MODEL_ALIASES[path][1]
    folder = as_path(path, "模型文件夹").expanduser()
    root = repo_root()
    if not folder.exists() and not folder.is_absolute() and root is not None and (root / folder).exists():
        folder = root / folder                    # 仓库里的相对路径（assets/chat_model）：不必先 cd 到仓库根目录
    if _is_reference_chat(folder) and not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder} 里没有参考对话模型（缺 model.safetensors）。它随仓库一起发布："
                                f"git checkout {CHAT_MODEL_DIR} 可以恢复，或运行 python -m course_lib.reference --chat "
                                "重新训练一个（2 核 CPU 上几十分钟）。")
    if not folder.exists():
        text = str(path)
        if text.count("/") == 1 and not text.startswith((".", "/", "~")):
            return _load_transformers(text, device)
        raise FileNotFoundError(f"找不到模型文件夹 {folder}。请检查路径；也可以不加 --model，使用课程默认的 SFT 模型。")
    if not folder.is_dir():
        raise ValueError(f"{folder} 是一个文件，不是模型文件夹：--model 要给包含 config.json 的文件夹。")
    config = folder / "config.json"
    meta = None
    if config.exists():
        meta = read_json(config, "模型配置", "文件可能损坏了：请重新保存或重新下载这个模型。")
    if isinstance(meta, dict) and _is_course_folder(meta):
        return _load_course(folder, device)
    if isinstance(meta, dict) and "model_type" in meta:
        return _load_transformers(folder, device)
    raise ValueError(f"{folder} 既不是 course_lib 保存的模型文件夹（config.json 里有 \"config\" 和 \"model_type\"，"
                     "外加 model.safetensors 和分词器），也不是 Hugging Face 的模型文件夹（config.json 里有 \"model_type\"）。"
                     f"文件夹里有：{', '.join(sorted(p.name for p in folder.iterdir())[:8]) or '（空）'}。")


def _load_course(folder: Path, device):
    from .checkpoint import load_model
    from .llama import Llama
    from .tokenizer import BPETokenizer
    model = load_model(folder, device=device).eval()
    if not isinstance(model, Llama):
        raise ValueError(f"{folder} 里是第 03 章的 GPT（字符级），没有对话模板要用的特殊 token，不能用来对话。"
                         "请用第 05 章起的 Llama 模型文件夹。")
    name = f"课程的参考对话模型 {CHAT_MODEL_DIR}" if _is_reference_chat(folder) else f"course_lib 模型 {folder}"
    for tok_dir in (folder, folder / "tokenizer"):
        if (tok_dir / BPETokenizer.MODEL_FILE).exists():
            return model, BPETokenizer.load(tok_dir), name
    raise FileNotFoundError(f"{folder} 里有模型，但找不到分词器（{BPETokenizer.MODEL_FILE} 和 {BPETokenizer.META_FILE}）。"
                            "请把训练这个模型时用的分词器 save() 到同一个文件夹。")


def _load_transformers(name, device):
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ImportError("读取 Hugging Face 格式的模型需要 transformers：pip install 'transformers>=5'") from None
    folder = Path(name)
    if folder.is_dir() and not list(folder.glob("*.safetensors")) and list(folder.glob("pytorch_model*.bin")):
        raise ValueError(f"{folder} 里只有 pytorch_model.bin（pickle 格式，加载时可能执行任意代码），课程不加载它。"
                         "请在你信任这个文件的环境里把它转成 safetensors：AutoModelForCausalLM.from_pretrained(文件夹)"
                         ".save_pretrained(新文件夹, safe_serialization=True)，再用新文件夹。")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name))
        model = AutoModelForCausalLM.from_pretrained(str(name), dtype=torch.float32).to(device).eval()
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"transformers 读不了 {name}（{first}）。如果是 Hub 上的模型名，需要联网；"
                         "如果是本地文件夹，请确认里面有 config.json、权重（*.safetensors）和分词器文件。") from None
    return model, tokenizer, f"transformers 模型 {name}"


def _load_default(device):
    try:
        from .sft import load_sft_model
    except ImportError:
        load_sft_model = None
    if load_sft_model is not None:
        model, tokenizer = load_sft_model(device=device)
        return model.eval(), tokenizer, "第 06 章的 SFT 模型（小雁）"
    from .reference import load_reference
    model, tokenizer = load_reference(device=device)
    return model, tokenizer, "参考基座模型（只做过预训练，没有学过对话：回答不会像样）"
