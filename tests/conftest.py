import os

import pytest
import torch

# 测试（包括 nbval 执行的 notebook）默认用 tiny profile：结果与提交的输出可比，GPU 机器上也不会跑成 small。
# 想在 GPU 上用别的档位测试：COURSE_PROFILE=small pytest
os.environ.setdefault("COURSE_PROFILE", "tiny")


def pytest_collection_modifyitems(config, items):
    for item in items:
        # nbval 在格子执行完后只等 5 秒输出消息（写死在 NbCellItem 里）；机器很忙时不够，放宽到 60 秒。
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="需要 CUDA GPU（CI 上没有）")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tmp_data_dir(tmp_path, monkeypatch):
    """把课程的数据目录指到临时文件夹，测试不碰仓库里的缓存。"""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def small_bpe(tmp_path_factory):
    """造一个小 BPE 分词器：新闻验证集的前 n_lines 行 + extra 几行，词表比字节回退要求的下限多 margin 个。"""
    from course_lib.data import load_corpus
    from course_lib.tokenizer import BPETokenizer

    def make(extra=(), margin=200, n_lines=400):
        lines = [line for line in load_corpus("news", "val").splitlines() if line.strip()][:n_lines] + list(extra)
        return BPETokenizer.train(lines, tmp_path_factory.mktemp("tok"), vocab_size=BPETokenizer.min_vocab_size(lines) + margin)
    return make
