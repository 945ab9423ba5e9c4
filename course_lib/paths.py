"""课程文件放在哪里：数据缓存、各章产出（分词器、检查点）。

- 在仓库里（pip install -e .）运行时：缓存放在仓库的 data/cache/，各章产出放在 data/runs/。
- 环境变量 COURSE_DATA_DIR 可以指定别的位置（例如 Colab 上挂载的 Google Drive）。
- 装成普通包、找不到仓库时：放在 ~/.cache/course_lib/。
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """课程仓库的根目录；course_lib 不在仓库里时返回 None。"""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").exists() and (root / "notebooks").is_dir() else None


def data_dir() -> Path:
    env = os.environ.get("COURSE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    return root / "data" if root else Path.home() / ".cache" / "course_lib"


def cache_dir() -> Path:
    """可以随时删掉、会自动重建的处理结果（清洗后的语料等）。"""
    return data_dir() / "cache"


def runs_dir() -> Path:
    """各章节保存、后面章节要读取的产出（分词器、检查点……）。"""
    return data_dir() / "runs"
