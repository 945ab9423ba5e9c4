"""bench/ 里的脚本能跑通、把结果写进指定的文档（只检查行为，不检查快慢：测速不放在单元测试里）。"""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpt2_bench_smoke_on_cpu(tmp_path):
    bench = _load("bench_gpt2")
    (tmp_path / "benchmarks.md").write_text("# 性能基准\n\n<!-- bench_gpt2:cpu_tiny -->\n旧的\n<!-- /bench_gpt2:cpu_tiny -->\n",
                                            encoding="utf-8")
    r = bench.main(["--size", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch", "2",
                    "--no-compile", "--docs", str(tmp_path)])
    assert r["tokens_per_sec"] > 0 and r["mfu"] is None and r["dtype"] == "float32"
    # 6·N（N 不含位置嵌入，词嵌入与 lm_head 共享只算一次）+ 注意力项
    assert r["flops_per_token"] > 6 * (r["params"] - 64 * 64)
    text = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    assert "旧的" not in text and text.count("<!-- bench_gpt2:cpu_tiny -->") == 1 and "tokens/s" in text
    assert json.loads((tmp_path / "bench_gpt2_cpu_tiny.json").read_text(encoding="utf-8"))["steps"] == 2


def test_gpt2_size_is_gpt2_small():
    from course_lib import GPT, GPTConfig
    bench = _load("bench_gpt2")
    with __import__("torch").device("meta"):
        model = GPT(GPTConfig(**bench.SIZES["gpt2"]))
    n = sum(p.numel() for p in model.parameters())
    assert 120e6 < n < 130e6  # GPT-2 small：124 M（词表补齐到 50304 多了约 3.6 万个嵌入参数）


# ---------------------------------------------------------------- bench_train：比值的统计与结论
def test_t_quantile_matches_the_t_table():
    report = _load("_report")
    for df, t in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (10_000, 1.960)]:
        assert abs(report.t_quantile(0.975, df) - t) < 1e-3, df


def test_ratio_summary_interval_is_the_t_interval_on_log_ratios():
    import math
    report = _load("_report")
    # 对数比值 0.1、0.3：均值 0.2，标准差 √0.02，标准误 √0.02 / √2 = 0.1，t(0.975, 自由度 1) = 12.7062
    q = report.ratio_summary([math.exp(0.1), math.exp(0.3)])
    assert abs(q["geo_mean"] - math.exp(0.2)) < 1e-12
    assert abs(math.log(q["ci_low"]) - (0.2 - 1.27062)) < 1e-4 and abs(math.log(q["ci_high"]) - (0.2 + 1.27062)) < 1e-4
    q = report.ratio_summary([1.0, 1.3, 0.9, 1.1])
    assert (q["n"], q["median"], q["min"], q["max"]) == (4, 1.05, 0.9, 1.3)


def test_verdict_comes_from_the_interval():
    report = _load("_report")
    faster = report.ratio_summary([1.10, 1.12, 1.09, 1.11, 1.13])
    assert faster["ci_low"] > 1 and faster["verdict"] == report.FASTER == "course_lib 更快"
    slower = report.ratio_summary([0.90, 0.88, 0.91, 0.89, 0.87])
    assert slower["ci_high"] < 1 and slower["verdict"] == report.SLOWER == "course_lib 更慢"
    straddle = report.ratio_summary([0.95, 1.05, 1.00, 0.98, 1.03])
    assert straddle["ci_low"] < 1 < straddle["ci_high"] and straddle["verdict"] == report.NOISE
    # 每一轮都 > 1，但波动大、轮数少：区间跨过 1，仍然只能说「噪声之内」
    spread = report.ratio_summary([1.01, 1.5, 1.02, 1.01])
    assert spread["min"] > 1 and spread["ci_low"] < 1 and spread["verdict"] == report.NOISE
    assert report.verdict(1.0, 1.2) == report.verdict(0.8, 1.0) == report.NOISE  # 区间碰到 1 也不算
    import pytest
    with pytest.raises(ValueError):
        report.ratio_summary([1.2])  # 一轮估计不了波动


def test_train_bench_smoke_on_cpu(tmp_path):
    bench = _load("bench_train")
    (tmp_path / "benchmarks.md").write_text("# 性能基准\n\n<!-- bench_train:cpu -->\n旧的\n<!-- /bench_train:cpu -->\n",
                                            encoding="utf-8")
    r = bench.main(["--runs", "3", "--steps", "2", "--warmup-rounds", "0", "--docs", str(tmp_path)])
    assert r["first_in_round"] == ["plain", "course_lib", "plain"]  # 先后顺序逐轮交替
    assert len(r["ratios"]) == 3 and all(v > 0 for v in r["plain_tok_s"] + r["course_lib_tok_s"])
    assert r["ratios"] == [a / b for a, b in zip(r["course_lib_tok_s"], r["plain_tok_s"])]  # 同一轮内相除
    q = r["ratio"]
    assert q["n"] == 3 and q["min"] <= q["median"] <= q["max"] and q["ci_low"] < q["geo_mean"] < q["ci_high"]
    text = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    assert "旧的" not in text and text.count("<!-- bench_train:cpu -->") == 1
    assert f"结论：{q['verdict']}" in text and "95% 区间" in text and "3 轮" in text and "≥ 1.0" not in text
    saved = json.loads((tmp_path / "bench_train_cpu.json").read_text(encoding="utf-8"))
    assert saved["ratios"] == r["ratios"] and saved["ratio"]["verdict"] == q["verdict"]


def test_serve_bench_smoke_on_cpu(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    bench = _load("bench_serve")
    r = bench.main(["--runs", "2", "--requests", "4", "--max-tokens", "4", "--levels", "4", "--slots", "4",
                    "--docs", str(tmp_path)])
    assert len(r["ratios"]["4"]) == 2 and all(v > 0 for v in r["tok_s"]["1"] + r["tok_s"]["4"])
    assert r["ratios"]["4"] == [a / b for a, b in zip(r["tok_s"]["4"], r["tok_s"]["1"])]
    assert r["peak_active"]["4"] > 1                         # 并发的请求真的一起解码了
    text = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    assert text.count("<!-- bench_serve:cpu -->") == 1 and "并发客户端" in text
    assert json.loads((tmp_path / "bench_serve_cpu.json").read_text(encoding="utf-8"))["requests"] == 4
