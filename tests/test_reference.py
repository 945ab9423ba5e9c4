"""参考基座模型（assets/base_model，course 语料 + 缩放实验选的大小）：发布的文件齐全、权重与配方一致、数字可复现，
模型卡和成绩单是生成的；issue 12 的两条目标（新闻 bpc 低于上一版参考模型；「见过」的一半明显高于随机和「没见过」）
成立；一条命令的配方能跑通（缩小版）。"""
import json
import math

import pytest
import torch

from course_lib.checkpoint import load_model, save_model
from course_lib.cli.reference import build_reference, main, model_card
from course_lib.eval import difference, report_card_markdown
from course_lib.llama import Llama, LlamaConfig
from course_lib.losses import evaluate_loss
from course_lib.paths import repo_root
from course_lib.reference import HEAD_WINDOWS, PUBLISHED_FILES, REFERENCE_CONFIG, load_reference, reference_dir, reference_metrics
from course_lib.scaling import CHOICE, size_config
from course_lib.token_data import load_token_bin, prepare_pretraining_data

ROOT = repo_root()
OLD_REPORT = ROOT / "docs" / "report_base_v1.json"   # 上一版参考模型（mix 语料，dim 256，800 步）的成绩单


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_published_files_recipe_and_size():
    folder = reference_dir()
    for name in PUBLISHED_FILES + ("report_base.md", "report_base.json"):
        assert (folder / name).exists(), f"assets/base_model 缺少 {name}"
    assert (folder / "model.safetensors").stat().st_size <= 16 * 1024 * 1024
    meta = _json(folder / "config.json")
    assert meta["recipe"] == json.loads(json.dumps(REFERENCE_CONFIG))  # 发布的就是默认配方训练出来的
    assert meta["command"] == "python -m course_lib.reference" and meta["step"] == REFERENCE_CONFIG["max_steps"]
    assert REFERENCE_CONFIG["corpus"] == "course"
    assert {k: REFERENCE_CONFIG[k] for k in size_config(CHOICE)} == size_config(CHOICE)  # 缩放实验选的大小


def test_reference_loads_reproduces_metrics_and_cards_are_generated():
    model, tok = load_reference()
    m = reference_metrics()
    assert 2e6 <= model.num_params() <= 10e6 and m["params"] == model.num_params()
    assert tok.vocab_size == REFERENCE_CONFIG["vocab_size"] and tok.fingerprint == m["tokenizer_fingerprint"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    val = load_token_bin(prepare_pretraining_data(tok, corpus=REFERENCE_CONFIG["corpus"], progress=False)["val"], tok)
    head = evaluate_loss(model, val, REFERENCE_CONFIG["block_size"], max_windows=HEAD_WINDOWS)
    assert abs(head - m["val_loss_head"]) < 1e-4
    assert math.isclose(m["val_perplexity"], math.exp(m["val_loss"]), rel_tol=1e-3)
    assert m["val_loss"] < math.log(tok.vocab_size) - 3  # 远好于均匀猜测（ln 6400 = 8.76）
    folder, meta = reference_dir(), _json(reference_dir() / "config.json")
    assert (folder / "README.md").read_text(encoding="utf-8") == model_card(meta["recipe"], m, meta["command"])
    report = _json(folder / "report_base.json")
    assert (folder / "report_base.md").read_text(encoding="utf-8") == report_card_markdown(report)


def test_news_bits_per_character_below_the_previous_reference():
    from course_lib.eval import _bpc_documents, ratio
    new, old = _json(reference_dir() / "report_base.json")["bpc"]["news"], _json(OLD_REPORT)["bpc"]["news"]
    assert new["bpc"]["value"] < old["bpc"]["value"]
    # 同一批新闻文档，逐篇配对：差的 95 % 区间整个在 0 以下
    chars = [len(d) for d in _bpc_documents("news")]
    diff = ratio([b - a for a, b in zip(old["doc_bits"], new["doc_bits"])], chars)
    assert diff["hi"] < 0, diff


def test_seen_half_clearly_above_chance_and_above_unseen():
    knowledge = _json(reference_dir() / "report_base.json")["knowledge"]
    for task in ("idiom_meaning", "poem_next", "xiehouyu", "char_meaning"):
        seen, unseen = knowledge[task]["seen"]["acc_norm"], knowledge[task]["unseen"]["acc_norm"]
        assert seen["lo"] > 0.25, (task, seen)
        assert difference(seen, unseen)["lo"] > 0, (task, seen, unseen)


def test_readme_comparison_table_is_generated():
    from course_lib.eval import compare_markdown
    table = compare_markdown({"上一版（docs/report_base_v1）": _json(OLD_REPORT),
                              "现在：assets/base_model": _json(reference_dir() / "report_base.json")})
    assert table in (ROOT / "README.md").read_text(encoding="utf-8"), "README 里的新旧基座对比表过时了：用 compare_markdown 重新生成"


def test_evaluate_loss_is_exact_mean_over_windows():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, max_seq_len=8, dim=16, n_layers=1, n_heads=2))
    data = torch.randint(0, 50, (8 * 5 + 3,))
    got = evaluate_loss(model, data, 8, batch_size=2)
    losses = [model(data[i * 8:(i + 1) * 8][None], data[i * 8 + 1:(i + 1) * 8 + 1][None])[1].item() for i in range(5)]
    assert abs(got - sum(losses) / 5) < 1e-5
    assert evaluate_loss(model, data.numpy().astype("uint16"), 8, batch_size=3) == pytest.approx(got, abs=1e-5)
    with pytest.raises(ValueError, match="不够一个"):
        evaluate_loss(model, data[:5], 8)


def test_save_model_half_precision_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, max_seq_len=8, dim=16, n_layers=1, n_heads=2, tie_weights=True))
    save_model(model, tmp_path, dtype=torch.float16)
    back = load_model(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert b.dtype == torch.float32
        assert torch.equal(a.half().float(), b), name
    assert back.lm_head.weight is back.embed_tokens.weight


def test_recipe_end_to_end_small(tmp_path, capsys):
    small = dict(corpus="news", tokenizer_chars=200_000, vocab_size=3200, block_size=32, dim=32, n_layers=1,
                 n_heads=2, n_kv_heads=1, batch_size=4, grad_accum_steps=1, max_steps=3, warmup_steps=1,
                 eval_interval=2, eval_iters=1, checkpoint_interval=2)
    out = build_reference(tmp_path / "out", tmp_path / "work", **small)
    for name in PUBLISHED_FILES:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 3 and metrics["tokens_seen"] == 3 * 4 * 32
    assert "验证集损失" in capsys.readouterr().out


def test_cli_refuses_to_overwrite_published_model_with_changed_recipe(capsys):
    assert main(["--max_steps", "3"]) == 2  # 参数错误：退出码 2，和其他命令一样
    assert "--out" in capsys.readouterr().err
    assert main(["--no_such_key", "1", "--out", "x"]) == 2
    assert "不认识的参数" in capsys.readouterr().err


def test_profile_base_is_the_reference_on_tiny_and_chapter_05_model_on_gpu_profiles(tmp_path, monkeypatch, capsys):
    from course_lib.reference import profile_base_dir
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert profile_base_dir("tiny") == reference_dir()
    assert profile_base_dir("small") == reference_dir()            # 还没有 small 档第 05 章的模型：退回参考模型并说明
    assert "还没有第 05 章预训练的模型" in capsys.readouterr().out
    torch.manual_seed(0)
    own = tmp_path / "runs" / "05_pretraining" / "model"
    save_model(Llama(LlamaConfig(vocab_size=50, max_seq_len=8, dim=16, n_layers=1, n_heads=2)), own,
               extra={"profile": "small", "step": 3})
    assert profile_base_dir("small") == own and profile_base_dir("full", quiet=True) == reference_dir()
