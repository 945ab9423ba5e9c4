"""画图：损失曲线、热力图（注意力、二元概率），中文标签在任何系统上都能正常显示。

中文字体：优先用依赖包 pylopdf-fonts-zh-cn 自带的思源黑体 Noto Sans SC（SIL OFL 开源许可），
这样 Linux、macOS、Windows、Colab 不联网也显示一致；那个包不在时，再找系统里已装的中文字体。
绝不使用 SimHei 等专有字体。
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib
from matplotlib import font_manager

SYSTEM_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
                    "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK JP")
_font_name: str | None = None


def bundled_font_path() -> Path | None:
    spec = importlib.util.find_spec("pylopdf_fonts_zh_cn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "NotoSansSC-Regular.otf"
    return path if path.exists() else None


def setup_chinese_font() -> str:
    """注册一个中文字体并设为 matplotlib 的默认无衬线字体，返回字体名。重复调用没有副作用。"""
    global _font_name
    if _font_name is None:
        path = bundled_font_path()
        if path is not None:
            font_manager.fontManager.addfont(str(path))
            _font_name = font_manager.FontProperties(fname=str(path)).get_name()
        else:
            installed = {f.name for f in font_manager.fontManager.ttflist}
            _font_name = next((n for n in SYSTEM_CJK_FONTS if n in installed), None)
            if _font_name is None:
                raise RuntimeError("找不到中文字体，图里的中文会显示成方框。"
                                   "请安装：pip install pylopdf-fonts-zh-cn（思源黑体，开源许可）。")
    rc = matplotlib.rcParams
    rc["font.sans-serif"] = [_font_name] + [f for f in rc["font.sans-serif"] if f != _font_name]
    rc["font.family"] = "sans-serif"
    rc["axes.unicode_minus"] = False  # 思源黑体没有 U+2212 负号，用普通连字符
    return _font_name


def _axes(ax, figsize):
    import matplotlib.pyplot as plt
    setup_chinese_font()
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_losses(history, ax=None, title: str = "损失曲线", baselines: dict | None = None):
    """画训练损失（每步，浅色）和评估时的 train/val 损失。history 是 Trainer 返回的 History 或 dict。

    baselines：{"标签": 数值}，画成水平虚线，例如 {"二元模型": 5.1, "ln V": 8.0}。
    """
    h = history.as_dict() if hasattr(history, "as_dict") else history
    ax = _axes(ax, (7, 4))
    if h.get("step_loss"):
        ax.plot(range(1, len(h["step_loss"]) + 1), h["step_loss"], color="tab:blue", alpha=0.25, lw=0.8, label="每步训练损失")
    if h.get("eval_step"):
        ax.plot(h["eval_step"], h["train_loss"], "o-", color="tab:blue", ms=3, label="训练集（评估）")
        if any(v == v for v in h["val_loss"]):
            ax.plot(h["eval_step"], h["val_loss"], "s-", color="tab:orange", ms=3, label="验证集")
    for i, (label, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=f"{label} = {value:.2f}")
    ax.set_xlabel("训练步数")
    ax.set_ylabel("交叉熵损失（nats）")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_heatmap(matrix, row_labels=None, col_labels=None, ax=None, title: str = "", cmap: str = "Blues",
                 xlabel: str = "", ylabel: str = "", annotate: bool = False, colorbar: bool = True):
    """通用热力图：注意力权重、二元概率表都用它。标签可以是汉字。"""
    import numpy as np
    m = matrix.detach().cpu().float().numpy() if hasattr(matrix, "detach") else np.asarray(matrix, dtype=float)
    ax = _axes(ax, (6, 5))
    im = ax.imshow(m, cmap=cmap, aspect="auto")
    if row_labels is not None:
        ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    if col_labels is not None:
        ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    if annotate:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() * 0.6 else "black")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def plot_attention(weights, tokens, ax=None, title: str = "注意力权重"):
    """一个头的注意力矩阵 (T, T)：第 i 行是第 i 个字「看」前面各个字的权重。"""
    return plot_heatmap(weights, tokens, tokens, ax=ax, title=title, cmap="viridis",
                        xlabel="被关注的字（key）", ylabel="当前的字（query）")
