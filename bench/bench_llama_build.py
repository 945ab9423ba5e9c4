"""llama-cpp-python 从源码编译要多久，pip 的 wheel 缓存省下多少（pyproject 的 [deploy] extra；第 11 章）。

PyPI 上的 llama-cpp-python 只有源码包：pip install 时现场用 CMake 编译整个 llama.cpp。编译好的 wheel 会进 pip 的
缓存（~/.cache/pip/wheels），之后在新的虚拟环境里再装同一个版本，直接用缓存里的 wheel。这个脚本量两次安装：

1. 全新的虚拟环境 + 空的缓存目录：下载源码包 + 编译（和 .ci/run 一样用可移植的 CMAKE_ARGS）；
2. 另一个全新的虚拟环境 + 同一个缓存目录：pip 直接装缓存里的 wheel。

都用 --no-deps（只量 llama-cpp-python 本身）。结果写进 docs/benchmarks.md 的 <!-- bench_llama_build:cpu --> 一节
和 docs/bench_llama_build_cpu.json。

    python bench/bench_llama_build.py          # 2 核 CPU 上约 6 分钟
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _report import publish  # noqa: E402

# .ci/run 用同样的参数：不用 -march=native，编出的库在别的 x86-64 CPU（有 AVX2 即可）上也能跑
PORTABLE = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
            "-DGGML_BMI2=ON")


def timed_install(venv: Path, cache: Path, spec: str) -> float:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CMAKE_ARGS": PORTABLE, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    t0 = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--cache-dir", str(cache), spec],
                   check=True, env=env)
    seconds = time.perf_counter() - t0
    check = subprocess.run([str(venv / "bin" / "python"), "-c",      # --no-deps：没有 numpy，import 不了，只查装上的版本
                            "from importlib.metadata import version; print(version('llama-cpp-python'))"],
                           check=True, capture_output=True, text=True, env=env)
    print(f"装好 llama-cpp-python {check.stdout.strip()}：{seconds:.1f} 秒", flush=True)
    return seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="写 benchmarks.md 和 JSON 的文件夹")
    args = ap.parse_args(argv)
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]["deploy"][0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build = timed_install(tmp / "venv1", tmp / "cache", spec)
        cached = timed_install(tmp / "venv2", tmp / "cache", spec)
        wheels = sorted((tmp / "cache").rglob("llama_cpp_python-*.whl"))
        wheel_mb = wheels[0].stat().st_size / 1e6 if wheels else float("nan")
    result = {"spec": spec, "machine": f"{platform.machine()}, {os.cpu_count()} 核 CPU", "cpu": platform.processor() or "",
              "python": platform.python_version(), "cmake_args": PORTABLE, "build_seconds": build,
              "cached_seconds": cached, "wheel_mb": wheel_mb}
    body = (f"`pip install --no-deps \"{spec}\"`，{result['machine']}，Python {result['python']}，"
            f"CMAKE_ARGS 与 `.ci/run` 相同（可移植的编译）。\n\n"
            "| 安装 | 用时 |\n|---|---|\n"
            f"| 全新的虚拟环境、空的 pip 缓存：下载源码包 + 编译 llama.cpp | {build:.0f} 秒 |\n"
            f"| 另一个全新的虚拟环境、同一个 pip 缓存：直接装缓存里的 wheel（{wheel_mb:.1f} MB） | {cached:.1f} 秒 |\n\n"
            f"缓存让第二次安装快了 {build / cached:.0f} 倍。")
    publish(args.docs, "bench_llama_build:cpu", result, body)
    print(body)
    return result


if __name__ == "__main__":
    main()
