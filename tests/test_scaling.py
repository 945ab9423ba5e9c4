"""course_lib.scaling：拟合算得对、选择规则照实执行、docs/scaling.md 是 scaling.json 渲染出来的（不是手写的）。"""
import json

import pytest

from course_lib import scaling
from course_lib.paths import repo_root

DOCS = repo_root() / "docs"


def _points(E=2.0, A=30.0, B=50.0):
    out = []
    for size, n, tps in (("xs", 1.5e6, 8000.0), ("s", 3.6e6, 4000.0), ("m", 5.9e6, 2500.0)):
        for d in (1e5, 2e5, 4e5):
            out.append({"size": size, "params": n, "tokens": d, "tokens_per_sec": tps,
                        "loss": E + A * n ** -scaling.ALPHA + B * d ** -scaling.BETA,
                        "news_bpc": 1.5 * (E + A * n ** -scaling.ALPHA + B * d ** -scaling.BETA)})
    return out


def test_fit_recovers_known_coefficients():
    f = scaling.fit(_points())
    assert f["E"] == pytest.approx(2.0, abs=1e-6) and f["A"] == pytest.approx(30.0, rel=1e-5)
    assert f["B"] == pytest.approx(50.0, rel=1e-6) and f["rmse"] < 1e-8
    assert scaling.predict(f, 1e7, 1e8) == pytest.approx(2 + 30 * 1e7 ** -0.34 + 50 * 1e8 ** -0.28, rel=1e-6)


def test_choose_uses_measured_speed_and_flags_ties():
    rep = scaling.choose(_points(), seconds=3600)
    by = {t["size"]: t for t in rep["candidates"]}
    assert by["s"]["tokens"] == 4000 * 3600 and by["s"]["speed_from"] == "实测"
    # l 没测过：速度按参数量从最接近的 m 换算
    assert by["l"]["speed_from"].startswith("由 m") and by["l"]["tokens_per_sec"] < by["m"]["tokens_per_sec"]
    best = min(rep["candidates"], key=lambda t: t["predicted_loss"])
    assert rep["fit_choice"] == best["size"] and rep["indistinguishable"] == [best["size"]]  # 残差为 0：没有并列


def test_published_sweep_is_what_the_code_renders():
    report = json.loads((DOCS / "scaling.json").read_text(encoding="utf-8"))
    assert (DOCS / "scaling.md").read_text(encoding="utf-8") == scaling.render_markdown(report)
    assert (DOCS / "scaling.png").exists()
    runs = report["runs"]
    assert len(runs) == len(scaling.SWEEP_SIZES) * len(scaling.BUDGETS)
    assert all(r["tokens"] == r["steps"] * report["batch_tokens"] for r in runs)
    # 拟合和选择都是从这些点重新算得出来的
    again = scaling.choose(runs, report["seconds"])
    assert again["fit"] == pytest.approx(report["fit"]) and again["fit_choice"] == report["fit_choice"]
    assert report["choice"] == scaling.CHOICE
    # 同样大小，预算越大损失越低（实验本身没有出错）
    for s in scaling.SWEEP_SIZES:
        losses = [r["loss"] for r in sorted((r for r in runs if r["size"] == s), key=lambda r: r["tokens"])]
        assert losses == sorted(losses, reverse=True)
