import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from course_lib.plotting import plot_attention, plot_heatmap, plot_losses, setup_chinese_font  # noqa: E402


def _render(fig):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    plt.close(fig)
    missing = [str(w.message) for w in caught if "missing from" in str(w.message) or "Glyph" in str(w.message)]
    assert not missing, f"中文字形缺失：{missing[:3]}"


def test_chinese_text_renders_without_missing_glyphs():
    name = setup_chinese_font()
    assert name and "SimHei" not in name
    fig, ax = plt.subplots()
    ax.set_title("损失曲线：训练集与验证集，负数 -1.5")
    ax.set_xlabel("训练步数（step）")
    ax.plot([0, 1], [-1, 1])
    _render(fig)


def test_plot_helpers_render_chinese():
    h = {"step_loss": [5, 4, 3], "eval_step": [0, 3], "train_loss": [5, 3], "val_loss": [5.1, 3.2]}
    ax = plot_losses(h, baselines={"二元模型": 4.0})
    _render(ax.figure)
    ax = plot_attention(torch.rand(4, 4).tril(), list("人民日报"))
    _render(ax.figure)
    ax = plot_heatmap(torch.rand(3, 3), list("中国人"), list("的了是"), annotate=True)
    _render(ax.figure)
