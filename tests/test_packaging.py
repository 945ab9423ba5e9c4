"""仓库层面的一致性：依赖清单同步、README 的两条命令、notebook 的 Colab 格子与规范。"""
import json
import re
from pathlib import Path

import nbformat
import pytest

from course_lib.cli import nbrun
from course_lib.cli.nbrun import colab_cells

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    lines = (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines()
    pip_items = {l.strip()[2:].strip() for l in lines if re.match(r"^\s{6}- ", l)}
    pip_items.discard("-e .")
    assert pip_items == wanted, f"只在一边的依赖：{sorted(pip_items ^ wanted)}"


def test_readme_has_exactly_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = {tag: re.search(rf"<!-- ci:{tag} -->\n```bash\n(.+?)\n```\n<!-- /ci:{tag} -->", text, re.S)
              for tag in ("install", "test")}
    assert all(blocks.values()), "README 里应有 ci:install 和 ci:test 两个命令块"
    assert "\n" not in blocks["install"].group(1) and "\n" not in blocks["test"].group(1)
    assert blocks["test"].group(1).strip() == "pytest"


def _notebooks():
    return sorted((ROOT / "notebooks").rglob("*.ipynb"))


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_hygiene_and_colab_cells(path):
    nb = nbformat.read(path, as_version=4)
    expected = colab_cells(path)
    assert [c.source for c in nb.cells[:2]] == [c.source for c in expected], \
        "Colab 徽章/安装格子过期：请运行 python -m course_lib.nbrun 重新生成"
    assert "widgets" not in nb.metadata
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.outputs for c in code), "notebook 必须带着真实运行的输出提交"
    for c in code:
        if c.outputs:
            assert c.execution_count is not None
        assert all(o.output_type != "error" for o in c.outputs)
    if "solutions" not in path.parts:
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        for heading in ("学习目标", "预计用时", "前置章节", "## 小结", "## 练习"):
            assert heading in text, f"{path.name} 缺少「{heading}」"
        assert any("NBVAL_CHECK_OUTPUT" in c.source for c in code)


def test_nbrun_record_timing_merges(tmp_path, monkeypatch):
    """两次记录（比如两个并行的 nbrun）都留在 docs/notebook_timings.json 里，后写的不覆盖先写的。"""
    from course_lib.cli import nbrun
    monkeypatch.setattr(nbrun, "TIMINGS", tmp_path / "docs" / "notebook_timings.json")
    nbrun.record_timing("01_bigram.ipynb", 12.34, "tiny")
    merged = nbrun.record_timing("02_self_attention.ipynb", 5.0, "tiny")
    on_disk = json.loads(nbrun.TIMINGS.read_text(encoding="utf-8"))
    assert on_disk == merged and on_disk["notebooks"] == {"01_bigram.ipynb": 12.3, "02_self_attention.ipynb": 5.0}
    assert "profile=tiny" in on_disk["machine"]


def test_readme_tables_are_the_committed_notebook_outputs():
    """README 里 <!-- readme:名字 --> 区块的表，逐字等于对应 notebook「# README: 名字」格子提交的输出；
    用时表等于 docs/notebook_timings.json。改了 notebook 没重写 README，这里就失败。"""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tables = nbrun.notebook_tables()
    blocks = re.findall(r"<!-- readme:([\w-]+) -->", readme)
    assert blocks, "README 里应该有从 notebook 输出生成的表"
    assert sorted(blocks) == sorted(tables), (blocks, sorted(tables))
    assert nbrun.fill_readme_tables(readme, tables) == readme, \
        "README 的表和 notebook 提交的输出不一致：运行 python -m course_lib.nbrun --readme-only"
