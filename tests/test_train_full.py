"""第 05 章的 Trainer：梯度累积、MFU、检查点与精确续训、多进程（DDP）、命令行。"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib import GPT, GPTConfig, Llama, LlamaConfig, TrainConfig, Trainer, load_model
from course_lib.tokenizer import BPETokenizer
from course_lib.checkpoint import STATE_FILE, TrainingFinishedError, latest_checkpoint
from course_lib.cli.pretrain import main
from course_lib.flops import flops_per_token, peak_flops
from course_lib.train import get_batch
from ddp_worker import BATCH_PER_RANK, WORLD_SIZE, make_data, run

REPO = Path(__file__).resolve().parents[1]
TRAIN, VAL = make_data(3000, 0), make_data(1000, 1)


def _gpt(seed=0, dropout=0.1, n_embd=32):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=n_embd, dropout=dropout))


def _cfg(**overrides):
    cfg = dict(max_steps=8, batch_size=4, block_size=16, grad_accum_steps=2, lr=3e-3, warmup_steps=2,
               eval_interval=4, eval_iters=2, progress=False, log=False, device="cpu")
    return TrainConfig(**{**cfg, **overrides})


def _assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "COURSE_DATA_DIR": str(tmp_path / "data"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


# ---------------------------------------------------------------- 检查点与精确续训
@pytest.mark.parametrize("interrupt", ["stop_at", "crash"])
def test_resume_is_bit_identical(tmp_path, interrupt):
    """dropout > 0、梯度累积 2：中断后用全新的模型和 Trainer 续训，最终权重与一口气训完逐位相同。"""
    full = Trainer(_gpt(), TRAIN, VAL, _cfg())
    full.fit()

    first = Trainer(_gpt(), TRAIN, VAL, _cfg(checkpoint_dir=str(tmp_path), checkpoint_interval=3))
    if interrupt == "stop_at":
        first.fit(stop_at=3)
    else:  # 第 5 步训练到一半「断电」：只剩第 3 步的检查点
        original = first.train_step

        def power_cut():
            if first.step == 4:
                raise RuntimeError("断电")
            return original()

        first.train_step = power_cut
        with pytest.raises(RuntimeError, match="断电"):
            first.fit()
    assert latest_checkpoint(tmp_path).name == "step_000003"

    # 另一个种子初始化的模型：权重、随机数状态、数据位置全部要从检查点恢复
    second = Trainer(_gpt(seed=123), TRAIN, VAL, _cfg(checkpoint_dir=str(tmp_path), resume="auto"))
    assert second.step == 3
    second.fit()
    _assert_same_weights(full.model, second.model)
    h1, h2 = full.history, second.history
    assert h1.step_loss == h2.step_loss and h1.lr == h2.lr
    assert h1.eval_step == h2.eval_step == [0, 4, 8] and h1.val_loss == h2.val_loss


def test_checkpoint_folder(tmp_path):
    trainer = Trainer(_gpt(), TRAIN, VAL, _cfg(checkpoint_dir=str(tmp_path), checkpoint_interval=3))
    trainer.fit()
    # 只保留最新的检查点，没有残留的临时文件夹
    assert [p.name for p in tmp_path.iterdir()] == ["step_000008"]
    folder = tmp_path / "step_000008"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", STATE_FILE]
    _assert_same_weights(trainer.model, load_model(folder))  # 检查点本身就是 save_model 格式
    state = torch.load(folder / STATE_FILE, weights_only=True)  # 只有张量、数字、字符串、列表、字典
    assert state["step"] == 8 and state["train_config"]["grad_accum_steps"] == 2
    assert state["model"]["config"]["dropout"] == 0.1 and len(state["history"]["step_loss"]) == 8


def test_resume_errors(tmp_path):
    ckpt = tmp_path / "run"
    Trainer(_gpt(), TRAIN, VAL, _cfg(max_steps=4, checkpoint_dir=str(ckpt))).fit()

    with pytest.raises(TrainingFinishedError, match="已经训练完了.*调大 max_steps"):
        Trainer(_gpt(), TRAIN, VAL, _cfg(max_steps=4, resume=str(ckpt)))
    with pytest.raises(ValueError, match="batch_size: 检查点里是 4，现在是 8"):
        Trainer(_gpt(), TRAIN, VAL, _cfg(batch_size=8, resume=str(ckpt)))
    with pytest.raises(ValueError, match="另一个模型配置.*n_embd"):
        Trainer(_gpt(n_embd=48), TRAIN, VAL, _cfg(resume=str(ckpt)))
    with pytest.raises(FileNotFoundError, match="没有检查点"):
        Trainer(_gpt(), TRAIN, VAL, _cfg(resume=str(tmp_path / "nothing")))

    bad = tmp_path / "bad_weights"
    shutil.copytree(ckpt / "step_000004", bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        Trainer(_gpt(), TRAIN, VAL, _cfg(resume=str(bad)))

    cut = tmp_path / "truncated"
    shutil.copytree(ckpt / "step_000004", cut)
    state = (cut / STATE_FILE).read_bytes()
    (cut / STATE_FILE).write_bytes(state[:len(state) // 2])
    with pytest.raises(ValueError, match="损坏或不完整"):
        Trainer(_gpt(), TRAIN, VAL, _cfg(resume=str(cut)))

    # 训完了还想多训：调大 max_steps 就行
    more = Trainer(_gpt(), TRAIN, VAL, _cfg(max_steps=6, resume=str(ckpt)))
    assert more.step == 4
    assert len(more.fit().step_loss) == 6


def test_config_validation():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        TrainConfig(checkpoint_interval=10)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        TrainConfig(resume="auto")


# ---------------------------------------------------------------- 梯度累积与取批
def test_grad_accum_matches_bigger_batch():
    """累积 2 个 4 条的小批次 ≈ 一个 8 条的批次（只差浮点求和顺序）。

    用 float64：key 的偏置真实梯度恒为 0（softmax 不受整行加常数影响），float32 下只剩舍入噪声，AdamW 把它
    除以 √v 放大成 lr 量级的随机更新，8 步后两边能差 4e-6（随 CPU 指令集、线程数而变）；float64 下约 1e-14。
    """
    a = Trainer(_gpt(dropout=0.0).double(), TRAIN, VAL, _cfg(batch_size=4, grad_accum_steps=2))
    b = Trainer(_gpt(dropout=0.0).double(), TRAIN, VAL, _cfg(batch_size=8, grad_accum_steps=1))
    ha, hb = a.fit(), b.fit()
    assert ha.step_loss == pytest.approx(hb.step_loss, rel=1e-6)  # GPT 的交叉熵按 float32 算（logits.float()）：差 1–2 ulp
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(x, y, rtol=0, atol=1e-9)


def test_get_batch_rank_slices():
    """各进程取的段拼起来，正好是单进程用 world_size 倍批大小取到的批。"""
    data = torch.arange(1000)
    whole, _ = get_batch(data, 8, 6, torch.Generator().manual_seed(0))
    parts = [get_batch(data, 8, 2, torch.Generator().manual_seed(0), rank=r, world_size=3)[0] for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)


# ---------------------------------------------------------------- 吞吐量与 MFU
def test_flops_per_token():
    gpt = _gpt()
    T = 16
    attention = 12 * 2 * 2 * 16 * T  # 12 · n_layer · n_head · head_dim · T
    assert flops_per_token(gpt, T) == 6 * gpt.num_params(non_embedding=True) + attention  # 共享的 wte 按 lm_head 算
    llama = Llama(LlamaConfig(vocab_size=50, max_seq_len=T, dim=32, n_layers=2, n_heads=4, n_kv_heads=2))
    n = llama.num_params() - llama.embed_tokens.weight.numel()  # 不共享时：词嵌入只是查表，lm_head 要算
    assert flops_per_token(llama, T) == 6 * n + 12 * 2 * 4 * 8 * T
    assert flops_per_token(torch.nn.Linear(3, 3), T) is None


def test_peak_flops_and_mfu(capsys):
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12 and peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("Tesla T4") == 65e12 and peak_flops("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops("Some Future GPU") is None and peak_flops("cpu") is None
    h = Trainer(_gpt(), TRAIN, VAL, _cfg(max_steps=4, eval_interval=2, log=True)).fit()
    assert h.tokens_per_sec > 0 and h.mfu is None  # CPU：不估计 MFU，也不打印
    out = capsys.readouterr().out
    assert "tok/s" in out and "MFU" not in out


# ---------------------------------------------------------------- 多进程（DDP）
@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="这个 PyTorch 没有 torch.distributed / gloo 后端，无法在 CPU 上跑两个进程")
def test_ddp_matches_single_process(tmp_path):
    """两个进程（gloo，CPU）各取全局批的一半 == 一个进程取整个全局批。

    两边看到的数据逐位相同，唯一的差别是浮点求和的顺序：DDP 先在每个进程里对一半样本求平均，
    再在进程间求平均；单进程一次对全部样本求平均。float32 的相对误差约 1e-7，10 步 AdamW 之后
    实测损失的相对差约 1e-7。rtol=1e-4 留了足够余量，又远小于数据切错时的差别（实测约 3e-2）。
    """
    _check_matches_single_process(_torchrun(tmp_path, "ddp"))


def _torchrun(out, *args) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
           str(REPO / "tests" / "ddp_worker.py"), str(out), *args]
    result = subprocess.run(cmd, cwd=REPO, env=_env(out), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _check_matches_single_process(out: Path) -> None:
    multi = json.loads((out / "history.json").read_text(encoding="utf-8"))
    single = run(BATCH_PER_RANK * WORLD_SIZE)
    assert multi["world_size"] == WORLD_SIZE and multi["eval_step"] == single.history.eval_step
    for key in ("step_loss", "train_loss", "val_loss"):
        assert multi[key] == pytest.approx(getattr(single.history, key), rel=1e-4), key
    assert single.history.step_loss[-1] < single.history.step_loss[0] - 0.2  # 确实在学习，不是两边都没动
    for x, y in zip(single.model.parameters(), load_model(out / "model").parameters()):
        assert torch.allclose(x, y, atol=1e-4)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="这个 PyTorch 没有 torch.distributed / gloo 后端，无法在 CPU 上跑两个进程")
def test_fsdp_matches_single_process_and_resumes_exactly(tmp_path):
    """FSDP（参数、梯度、优化器状态切成两半）：和 DDP 一样等于一个进程取整个全局批（容差的理由同上：
    reduce-scatter 先在进程间求和再平均，只差浮点求和的顺序）；检查点里的优化器状态是两个进程各写一份的分片，
    第 5 步停下、新开两个进程续训到第 10 步，权重与一口气训完的逐位相同。"""
    whole = _torchrun(tmp_path / "whole", "fsdp")
    _check_matches_single_process(whole)
    parts = _torchrun(tmp_path / "parts", "fsdp", "5")
    step5 = latest_checkpoint(parts / "checkpoints")
    assert step5.name == "step_000005" and len(list((step5 / "optimizer").glob("*.distcp"))) == WORLD_SIZE
    _torchrun(tmp_path / "parts", "fsdp", "resume")
    a, b = load_model(whole / "model"), load_model(parts / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    resumed = json.loads((parts / "history.json").read_text(encoding="utf-8"))
    assert resumed["step_loss"] == json.loads((whole / "history.json").read_text(encoding="utf-8"))["step_loss"]


# ---------------------------------------------------------------- 命令行
CLI_ARGS = ["--profile", "tiny", "--corpus", "reviews", "--tokenizer_chars", "30000", "--vocab_size", "2100",
            "--block_size", "32", "--dim", "32", "--n_layers", "1", "--n_heads", "2", "--n_kv_heads", "1",
            "--batch_size", "4", "--grad_accum_steps", "2", "--warmup_steps", "0", "--eval_interval", "2",
            "--eval_iters", "2", "--checkpoint_interval", "2"]


def _cli(tmp_path, *extra):
    cmd = [sys.executable, "-m", "course_lib.train", "--out", str(tmp_path / "run"), *CLI_ARGS, *extra]
    result = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "RuntimeWarning" not in result.stderr
    return result.stdout


def test_cli_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    log = _cli(tmp_path, "--max_steps", "4")
    assert "从头开始训练" in log and "训练完成" in log
    model, tok = load_model(out / "model"), BPETokenizer.load(out / "model")
    assert isinstance(model, Llama) and model.config.vocab_size == tok.vocab_size == 2100
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert len(history["step_loss"]) == 4 and history["eval_step"] == [0, 2, 4]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000004"]
    assert (out / "loss.png").stat().st_size > 0

    # 同样的命令再跑一次（在本进程里调用 main，省去启动解释器的时间）：已经训完，说明怎样多训
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    assert main(["--out", str(out), *CLI_ARGS, "--max_steps", "4"]) == 0
    log = capsys.readouterr().out
    assert "已经训练完了" in log and "--max_steps" in log

    # 调大 max_steps：从第 4 步续训到第 6 步，前 4 步的历史原样保留
    log = _cli(tmp_path, "--max_steps", "6")
    assert "续训" in log and "第 4 步" in log
    resumed = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert len(resumed["step_loss"]) == 6 and resumed["step_loss"][:4] == history["step_loss"]
    assert len((out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    assert load_model(out / "model").config == model.config


def test_cli_bad_arguments(tmp_path, capsys):
    assert main(["--profile", "tiny", "--out", str(tmp_path), "--bogus", "1"]) == 2
    assert "不认识的参数 --bogus" in capsys.readouterr().err
    assert main(["--profile", "tiny", "--out", str(tmp_path), "--max_steps", "abc"]) == 2
    assert "--max_steps 的值 'abc' 不是 int" in capsys.readouterr().err
    assert main(["--profile", "tiny"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--profile", "huge", "--out", str(tmp_path)]) == 2
    assert "不认识的 profile" in capsys.readouterr().err


def test_pretraining_profiles():
    """三档的键相同；模型和训练设置都能构造出来（不训练）。"""
    from course_lib.profiles import CHAPTERS
    profiles = CHAPTERS["05_pretraining"]
    assert set(profiles["tiny"]) == set(profiles["small"]) == set(profiles["full"])
    for p in profiles.values():
        LlamaConfig(vocab_size=p["vocab_size"], max_seq_len=p["block_size"], dim=p["dim"], n_layers=p["n_layers"],
                    n_heads=p["n_heads"], n_kv_heads=p["n_kv_heads"])
        TrainConfig(max_steps=p["max_steps"], batch_size=p["batch_size"], grad_accum_steps=p["grad_accum_steps"],
                    checkpoint_dir="x", checkpoint_interval=p["checkpoint_interval"])


def test_memory_table_in_docs_is_computed():
    # docs/distributed.md 里 DDP / FSDP 每张卡的显存表由 course_lib.distributed.memory_table() 算出，不是手写的
    from course_lib.distributed import ONE_B, memory_table, training_memory
    from course_lib.llama import LlamaConfig
    text = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    assert f"<!-- memory-table -->\n{memory_table()}\n<!-- /memory-table -->" in text
    big = LlamaConfig(**ONE_B)
    ddp, fsdp = training_memory(big, 4, 2048), training_memory(big, 4, 2048, 8, "fsdp")
    assert 1.05e9 < ddp["params"] < 1.15e9 and ddp["states"] == 16 * ddp["params"]   # 每个参数 16 字节
    assert ddp["states"] / 8 < fsdp["states"] < ddp["states"] / 4                     # 切成 8 份，外加临时收集的一个单元
    assert fsdp["activations"] == ddp["activations"]                                  # FSDP 不切激活


def test_parallel_setting_is_checked_and_single_process_ignores_it(tmp_path):
    with pytest.raises(ValueError, match="parallel"):
        TrainConfig(parallel="zero3")
    trainer = run(BATCH_PER_RANK, "fsdp")                     # 单进程：fsdp 不起作用，和 ddp 的结果逐位相同
    assert not trainer.fsdp and trainer.plain_model() is trainer.model
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.parameters(), run(BATCH_PER_RANK).model.parameters()))
