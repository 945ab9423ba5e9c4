import pytest
import torch

from course_lib import active_profile, autocast_dtype, chapter_config, get_device, seed_everything


def test_profile_from_env(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "small")
    assert active_profile() == "small"
    monkeypatch.setenv("COURSE_PROFILE", "huge")
    with pytest.raises(ValueError, match="不认识的 profile"):
        active_profile()
    monkeypatch.delenv("COURSE_PROFILE")
    assert active_profile() == ("small" if torch.cuda.is_available() else "tiny")


def test_chapter_config_overrides():
    cfg = chapter_config("03_gpt", "tiny", max_steps=5)
    assert cfg["max_steps"] == 5
    assert chapter_config("03_gpt", "tiny")["max_steps"] != 5  # 返回的是副本
    with pytest.raises(KeyError, match="没有这些键"):
        chapter_config("03_gpt", "tiny", max_stepz=5)
    for chapter in ("01_bigram", "02_self_attention", "03_gpt"):
        keys = [set(chapter_config(chapter, p)) for p in ("tiny", "small", "full")]
        assert keys[0] == keys[1] == keys[2], f"{chapter} 三档配置的键不一致"


@pytest.mark.skipif(torch.cuda.is_available(), reason="这台机器有 CUDA")
def test_cuda_requested_without_gpu():
    with pytest.raises(RuntimeError, match="没有可用的 NVIDIA GPU"):
        get_device("cuda")


def test_device_and_dtype():
    assert get_device("cpu").type == "cpu"
    assert autocast_dtype("cpu") == torch.float32
    with pytest.raises(ValueError, match="不认识的设备"):
        get_device("tpu")
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_progress_bar_honours_tqdm_disable(monkeypatch):
    """nbrun 设 TQDM_DISABLE=1：训练、SFT、分词的进度条都不该写进 notebook 的输出。"""
    from course_lib.report import progress_bar
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress_bar(range(3)).disable and progress_bar(range(3), enabled=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(range(3)).disable
