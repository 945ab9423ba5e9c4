"""bench/ 里的脚本能跑通、把结果写进指定的文档（只检查行为，不检查快慢：测速不放在单元测试里）。"""
import importlib.util
import json
from pathlib import Path

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
