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
