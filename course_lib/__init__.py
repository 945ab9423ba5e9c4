"""course_lib：《从零构建大语言模型》课程的共享代码。

每一章 notebook 先手写一个概念，再导入这里同名、同数学的实现，并验证两者一致。
常用的名字可以直接 from course_lib import Trainer 这样导入；它们在第一次用到时才加载对应的模块
（所以 python -m course_lib.train 这类命令不会把自己的模块导入两遍）。
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "bigram": ("BigramLM", "bigram_counts", "bigram_nll", "bigram_probs"),
    "checkpoint": ("load_model", "save_model"),
    "data": ("load_corpus", "load_idioms", "load_reviews"),
    "device": ("autocast_dtype", "get_device", "seed_everything"),
    "gpt": ("GPT", "GPTConfig"),
    "llama": ("Llama", "LlamaConfig"),
    "profiles": ("active_profile", "chapter_config"),
    "report": ("print_environment",),
    "tokenizer": ("BPETokenizer", "CharTokenizer"),
    "train": ("TrainConfig", "Trainer"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'course_lib' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
