"""原地重新执行课程 notebook（tiny profile），把真实输出写回文件，并记录每章用时。

用法（在仓库根目录；需要 pip install -e ".[test]" 装好的 nbclient）：
    python -m course_lib.nbrun                          # 全部章节 + 参考答案
    python -m course_lib.nbrun notebooks/03_gpt.ipynb
    python -m course_lib.nbrun --update-readme          # 顺便把实测用时写进 README 的表格
    python -m course_lib.nbrun --readme-only            # 只按提交的输出重写 README 的表（用时、各章的结果表）

它还会统一每个 notebook 开头的 Colab 徽章和安装格子：仓库地址只写在 pyproject.toml 的
[project.urls] 里，这里读出来生成，所以九本 notebook 不用手工粘贴。
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import time
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

from ..files import atomic_write_json, atomic_write_text
from ..paths import repo_root
from ..profiles import active_profile
from . import ArgumentParser

ROOT = repo_root() or Path.cwd()

TIMINGS = ROOT / "docs" / "notebook_timings.json"
MEASURED_ROW = re.compile(r"(\| tiny（2 核 CPU） \| 约 )\d+( 秒（实测）)")


def repo_url() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M).group(1)


def _nbformat():
    """nbformat / nbclient 随 jupyterlab 一起安装；缺了时说清楚怎么装，而不是一行 ImportError。"""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:
        raise SystemExit(f"python -m course_lib.nbrun 需要 nbformat 和 nbclient（{e.name} 没有安装）："
                         "请运行 pip install -e \".[test]\"（或 pip install nbformat nbclient）。") from None
    return nbformat, NotebookClient


def colab_cells(nb_path: Path) -> list:
    nbformat, _ = _nbformat()
    url = repo_url()
    slug = url.split("github.com/")[1]
    rel = nb_path.resolve().relative_to(ROOT).as_posix()
    badge = nbformat.v4.new_markdown_cell(
        f"[![在 Colab 中打开](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{slug}/blob/main/{rel})")
    badge.metadata["tags"] = ["colab-badge"]
    folder = "/content/" + slug.split("/")[1]
    setup = nbformat.v4.new_code_cell(
        "# 在 Google Colab 上运行时：下载课程代码并安装依赖（约 1 分钟）；在自己电脑上运行时什么也不做。\n"
        "import os, subprocess, sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    if not os.path.exists(\"{folder}\"):\n"
        f"        subprocess.run([\"git\", \"clone\", \"--depth\", \"1\", \"{url}\", \"{folder}\"], check=True)\n"
        f"        subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"-e\", \"{folder}\"], check=True)\n"
        f"    sys.path.insert(0, \"{folder}\")\n"
        f"    os.chdir(\"{folder}/{nb_path.resolve().parent.relative_to(ROOT).as_posix()}\")")
    setup.metadata["tags"] = ["colab-setup"]
    return [badge, setup]


def with_colab_cells(nb, nb_path: Path):
    """去掉旧的徽章/安装格子，在最前面放上新生成的。"""
    keep = [c for c in nb.cells if not {"colab-badge", "colab-setup"} & set(c.metadata.get("tags", []))]
    nb.cells = colab_cells(nb_path) + keep
    return nb


def clean(nb):
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    return nb


def execute(nb_path: Path, timeout: int) -> float:
    nbformat, NotebookClient = _nbformat()
    nb = with_colab_cells(nbformat.read(nb_path, as_version=4), nb_path)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(nb_path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    for cell in nb.cells:  # 「预计用时」表里 tiny 那一行写上这次实测的时间
        if cell.cell_type == "markdown":
            cell.source = MEASURED_ROW.sub(lambda m: f"{m.group(1)}{seconds:.0f}{m.group(2)}", cell.source)
    atomic_write_text(nb_path, nbformat.writes(clean(nb)) + "\n")
    return seconds


README_CELL = re.compile(r"# README: ([\w-]+)")   # 格子的第一行：它输出的 Markdown 表抄进 README 的同名区块


def notebook_tables(notebooks_dir: Path | None = None) -> dict[str, str]:
    """各章 notebook 里以「# README: 名字」开头的格子 → 它提交的 Markdown 输出（README 的表都从这里来）。"""
    out = {}
    for path in sorted((notebooks_dir or ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            m = README_CELL.match("".join(cell["source"]))
            if cell["cell_type"] != "code" or not m:
                continue
            texts = ["".join(o["data"]["text/markdown"]) for o in cell.get("outputs", [])
                     if "text/markdown" in o.get("data", {})]
            if not texts:
                raise ValueError(f"{path.name} 的「# README: {m.group(1)}」格子没有 Markdown 输出：先执行这本 notebook。")
            out[m.group(1)] = "\n\n".join(t.strip() for t in texts)
    return out


def fill_readme_tables(text: str, tables: dict[str, str]) -> str:
    """把 README 里 <!-- readme:名字 --> … <!-- /readme:名字 --> 之间的内容换成 notebook 的输出。"""
    for name, table in tables.items():
        text = re.sub(rf"(<!-- readme:{name} -->\n).*?(\n<!-- /readme:{name} -->)",
                      lambda m, t=table: m.group(1) + t + m.group(2), text, flags=re.S)
    return text


def update_readme(timings: dict) -> None:
    readme = ROOT / "README.md"
    text = fill_readme_tables(readme.read_text(encoding="utf-8"), notebook_tables())
    rows = ["| 章节 | tiny（2 核 CPU，实测） |", "|---|---|"]
    for name, t in sorted(timings["notebooks"].items()):
        if not name.startswith("solutions/"):
            rows.append(f"| `{name}` | {t:.0f} 秒 |")
    table = "\n".join(rows)
    new = re.sub(r"(<!-- timings -->\n).*?(\n<!-- /timings -->)", lambda m: m.group(1) + table + m.group(2),
                 text, flags=re.S)
    atomic_write_text(readme, new)


def record_timing(name: str, seconds: float, profile: str) -> dict:
    """把一本笔记本的用时合并进 docs/notebook_timings.json，返回合并后的全部记录。

    加文件锁、在锁里重新读一遍再写：两个 nbrun 同时跑不同的笔记本时，谁也不会覆盖掉对方的记录。
    """
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    with open(TIMINGS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        timings = json.loads(TIMINGS.read_text(encoding="utf-8")) if TIMINGS.exists() else {"notebooks": {}}
        timings["notebooks"][name] = round(seconds, 1)
        timings["machine"] = f"{platform.machine()}, {os.cpu_count()} 核 CPU, profile={profile}"
        atomic_write_json(TIMINGS, timings)
    return timings


def _check_notebook(path: Path) -> Path:
    """要执行的 notebook 必须存在、是 .ipynb、在仓库的 notebooks/ 里（计时按 notebooks/ 下的相对路径记录）。"""
    path = path.resolve()
    if not path.is_file() or path.suffix != ".ipynb":
        raise ValueError(f"{path} {'不存在' if not path.exists() else '不是 .ipynb 文件'}：请给 notebooks/ 里的 notebook。")
    if not path.is_relative_to(ROOT / "notebooks"):
        raise ValueError(f"{path} 不在 {ROOT / 'notebooks'} 里：nbrun 只执行课程仓库里的 notebook。")
    nbformat, _ = _nbformat()
    try:
        nbformat.read(path, as_version=4)
    except (ValueError, KeyError, OSError) as e:  # NotJSONError 也是 ValueError
        raise ValueError(f"{path} 不是合法的 notebook（{type(e).__name__}）：文件可能被改坏了，可以用 git checkout 恢复。") from None
    return path


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m course_lib.nbrun", description=__doc__,
                                 formatter_class=RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="要执行的 notebook（默认：全部章节 + 参考答案）")
    ap.add_argument("--profile", default="tiny", help="用哪一档配置执行（默认 tiny）")
    ap.add_argument("--timeout", type=int, default=1800, help="每个格子的超时秒数")
    ap.add_argument("--update-readme", action="store_true", help="把实测用时写进 README 的表格")
    ap.add_argument("--readme-only", action="store_true",
                    help="不执行任何 notebook，只按提交的输出和 docs/notebook_timings.json 重写 README 的表格")
    args = ap.parse_args(argv)
    if args.readme_only:
        update_readme(json.loads(TIMINGS.read_text(encoding="utf-8")))
        return 0
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    try:  # 执行任何一本之前先检查参数：一行中文错误，退出码 2
        active_profile(args.profile)
        if args.timeout <= 0:
            raise ValueError(f"--timeout 必须是正整数（每个格子最多执行多少秒），收到 {args.timeout}。")
        paths = [_check_notebook(p) for p in paths]
    except ValueError as e:
        ap.error(f"{e}")
    os.environ["COURSE_PROFILE"] = args.profile
    os.environ["TQDM_DISABLE"] = "1"  # 进度条是给人看的；写进文件的输出只保留摘要行
    timings = {"notebooks": {}}
    for p in paths:
        seconds = execute(p, args.timeout)
        name = p.relative_to(ROOT / "notebooks").as_posix()
        timings = record_timing(name, seconds, args.profile)  # 每跑完一本就记下，中途失败也不丢前面的
        print(f"{name}: {seconds:.1f} 秒", flush=True)
    if args.update_readme:
        update_readme(timings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
