"""course_lib/bands.py：notebook 断言的结果范围与产生结果的超参数分开放，每条范围都有实测记录、都真的被断言。"""
import json
import re

import pytest

from course_lib.bands import BANDS, MEASURED, chapter_bands
from course_lib.paths import repo_root
from course_lib.profiles import CHAPTERS, PROFILES


def code_cells(chapter: str) -> str:
    nb = json.loads((repo_root() / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_every_chapter_has_all_profiles_with_the_same_keys():
    assert set(BANDS) <= set(CHAPTERS), "BANDS 里有 CHAPTERS 没有的章"
    for chapter, by_profile in BANDS.items():
        assert tuple(by_profile) == PROFILES, f"{chapter} 的范围应该正好有 {PROFILES} 三档"
        keys = [set(by_profile[p]) for p in PROFILES]
        assert keys[0] == keys[1] == keys[2], f"{chapter} 三档范围的键不一致"
        for profile, bands in by_profile.items():
            for key, value in bands.items():
                assert value is None or isinstance(value, (int, float, tuple)), f"{chapter}/{profile}/{key} = {value!r}"


def test_every_band_has_its_measurement_recorded():
    assert set(MEASURED) == set(BANDS)
    for chapter, record in MEASURED.items():
        assert record.get("run"), f"{chapter} 缺少定出范围的那次运行（run）"
        assert set(record) - {"run"} == set(BANDS[chapter]["tiny"]), f"{chapter} 的实测记录与范围的键不一致"


def test_no_band_left_among_the_hyperparameters():
    for chapter, bands in BANDS.items():
        for profile in PROFILES:
            left = set(bands[profile]) & set(CHAPTERS[chapter][profile])
            assert not left, f"CHAPTERS[{chapter!r}][{profile!r}] 里还有断言用的范围 {sorted(left)}：应只在 bands.py 里"


@pytest.mark.parametrize("chapter", list(BANDS))
def test_every_band_is_asserted_in_its_notebook(chapter):
    code = code_cells(chapter)
    assert f'bands = chapter_bands("{chapter}")' in code
    for key in BANDS[chapter]["tiny"]:
        assert re.search(rf"""bands\[["']{key}["']\]""", code), f"notebooks/{chapter}.ipynb 没有用到范围 {key}"
        assert not re.search(rf"""cfg\[["']{key}["']\]""", code), f"notebooks/{chapter}.ipynb 仍从 cfg 读 {key}"
    used = set(re.findall(r"""bands\[["'](\w+)["']\]""", code))
    assert used <= set(BANDS[chapter]["tiny"]), f"notebooks/{chapter}.ipynb 读了不存在的范围 {sorted(used - set(BANDS[chapter]['tiny']))}"


def test_chapter_bands(monkeypatch):
    tiny = chapter_bands("03_gpt", "tiny")
    assert tiny == BANDS["03_gpt"]["tiny"]
    tiny["bigram_margin"] = 123
    assert BANDS["03_gpt"]["tiny"]["bigram_margin"] != 123  # 返回的是副本
    monkeypatch.setenv("COURSE_PROFILE", "full")
    assert chapter_bands("03_gpt") == BANDS["03_gpt"]["full"]
    with pytest.raises(KeyError, match="没有断言的结果范围"):
        chapter_bands("10_nope")
    with pytest.raises(ValueError, match="不认识的 profile"):
        chapter_bands("03_gpt", "huge")
