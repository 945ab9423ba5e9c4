"""course_lib：《从零构建大语言模型》课程的共享代码。

每一章 notebook 先手写一个概念，再导入这里同名、同数学的实现，并验证两者一致。
"""
from .bigram import BigramLM, bigram_counts, bigram_nll, bigram_probs
from .checkpoint import load_model, save_model
from .data import load_corpus, load_idioms, load_reviews
from .device import autocast_dtype, get_device, seed_everything
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .profiles import active_profile, chapter_config
from .report import print_environment
from .tokenizer import BPETokenizer, CharTokenizer
from .train import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "BigramLM", "bigram_counts", "bigram_nll", "bigram_probs", "load_model", "save_model",
    "load_corpus", "load_idioms", "load_reviews", "autocast_dtype", "get_device", "seed_everything",
    "GPT", "GPTConfig", "Llama", "LlamaConfig", "BPETokenizer", "active_profile", "chapter_config", "print_environment", "CharTokenizer",
    "TrainConfig", "Trainer",
]
