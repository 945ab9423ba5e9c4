"""每章开头打印的环境信息：版本、设备、profile、中文字体。"""
from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import torch
from tqdm.auto import tqdm

from .device import autocast_dtype, get_device
from .profiles import active_profile

def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """tqdm 进度条。enabled=False，或环境变量 TQDM_DISABLE=1（course_lib.nbrun 批量执行时设置）时不显示。

    tqdm 自己只在没有显式传 disable= 时才读 TQDM_DISABLE，所以这里替它读一次。
    """
    return tqdm(iterable, disable=not enabled or os.environ.get("TQDM_DISABLE") == "1", **kwargs)


PACKAGES = ("torch", "numpy", "matplotlib", "sentencepiece", "transformers", "peft", "bitsandbytes")


def environment() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(terse=True)}
    for pkg in PACKAGES:
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "未安装"
    device = get_device()
    info["device"] = str(device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["cpu_threads"] = torch.get_num_threads()
    info["autocast_dtype"] = str(autocast_dtype(device)).replace("torch.", "")
    info["profile"] = active_profile()
    info["profile_source"] = "环境变量 COURSE_PROFILE" if os.environ.get("COURSE_PROFILE") else "自动选择"
    return info


def print_environment() -> dict:
    info = environment()
    width = max(map(len, info))
    for k, v in info.items():
        print(f"{k:<{width}} : {v}")
    return info
