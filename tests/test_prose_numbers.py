r"""正文里的实测数字必须来自运行（issue 11 第 4 条「Numbers in prose come from runs」）。

不执行 notebook，只读提交的 .ipynb（JSON），几毫秒跑完。对 notebooks/ 和 notebooks/solutions/ 里的每一本：

**要检查的数**（在 Markdown 格子的正文里）
- 有效数字 ≥ 3 位的数：``3.14``、``0.613``、``1,234``、``12.5 M``、``119 万``。整数末尾的 0 不算有效数字
  （``100``、``5000`` 是凑整的数，不像测出来的）；小数末尾的 0 算（``3.00`` 是 3 位）。
- 任何百分数：``61 %``、``61%``、``0.5%``。
- 尾数带小数点的科学记数：``6.7e-06``，以及单独成一个公式的 ``$3.7\times10^{-14}$``（测出来的读数常这样写）。

**不检查的**
- 代码：行内代码 `` `…` ``、代码块里的数。LaTeX 公式（``$…$``、``$$…$$``）里的数：那是由常量算出的式子
  （``$64/10944 \approx 0.6\%$``、``$2^{16}$``），除非整个公式就是一个科学记数的读数（见上）。
- 链接地址、HTML 标签、arXiv 编号、带两个以上小数点的版本号（``3.11.7``）。
- 紧贴拉丁字母、数字或下划线的数：型号和名字（``H100``、``fp32``、``int8``、``Qwen2.5``）。
- 年份（1950–2030 的四位整数，后面不跟「个、条、步、字……」这类量词）；章节号（``第 5.4 节``、``§5.4``、
  ``5.4 节``、标题开头的编号）。
- 「预计用时」表里 tiny 那一行的「约 N 秒（实测）」：这个数由 ``python -m course_lib.nbrun`` 执行后写进去，本身就来自运行。
- 常量：同一本 notebook 里代码格子的源码（去掉 ``#`` 注释）和 Markdown 里的代码（`` `0.995` ``、练习里的调用）出现过的数，
  是超参数或常量，不是测量结果。百分数 p% 只与源码里的 p/100 算同一个数（``ASSUMED_MFU = 0.30`` 对应正文的 30%；
  源码里碰巧有个 ``1.5`` 不能替正文的「1.5%」作证）。
- ``ALLOWED`` 里逐条列出、写明理由的真常量（外部项目的数字之类，输出里无从产生）。

**怎样算「输出里有」**：收集同一本 notebook 所有代码格子的输出（stream 文本、``text/plain``、``text/markdown``、
``text/html``）里的数，去掉千位分隔符后按数值比较。正文里的数 x 写到小数点后 d 位，就在 ±0.5×10⁻ᵈ 以内找输出里的数 v，
也就是 v 按正文的精度四舍五入后等于 x（``0.61`` 对得上 ``0.6132``，``0.613`` 对不上 ``0.61``）；整数末尾的 0 按凑整处理
（``1,200`` 容许 ±50，``70%`` 容许 ±5 个百分点）。百分数 p% 可以对上输出里的 p（``61%``、``61.3``）或 100·v（``0.613``）；
普通数也可以对上输出里的百分数 ÷ 100。带量级后缀的数（``12.5 M``、``119 万``）按尾数和乘开后的值各比一次。
正负号不比（「下降 0.35」对得上输出 ``-0.35``）。

对不上就报错，列出每一处（notebook、格子编号、数字、所在句子）。改法：把这句话放进代码格子、用变量生成
（``display(Markdown(f"…"))``，它的输出就是正文），或删掉这个数、改成定性的说法；真常量才放进 ``ALLOWED``。
"""
from __future__ import annotations

import io
import json
import re
import tokenize
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))

# 真常量：notebook（notebooks/ 下的相对路径）→ 正文里原样出现的字符串（含数字）。每条一行理由。
ALLOWED: dict[str, list[tuple[str, str]]] = {
    "05_pretraining.ipynb": [
        ("词表 64,793", "ChatGLM2 分词器的词表大小（Baby-Llama2-Chinese 用的就是它）：外部项目的常量，本课无从测出"),
    ],
}

# ---------------------------------------------------------------------------------------------------------------
# 抽数字

_SCALE = {"k": Decimal(10) ** 3, "K": Decimal(10) ** 3, "千": Decimal(10) ** 3, "M": Decimal(10) ** 6,
          "万": Decimal(10) ** 4, "B": Decimal(10) ** 9, "G": Decimal(10) ** 9, "亿": Decimal(10) ** 8}
NUMBER = re.compile(r"""
    (?<![A-Za-z0-9_.,])                      # 不紧贴字母、数字、小数点：H100、fp32、v0.11 不算
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?     # 1,234 / 1,234.5
          |\d+\.\d+(?:[eE][-+]?\d+)?         # 3.14 / 4.7e-05
          |\d+(?:[eE][-+]?\d+)?)             # 61 / 1e-3
    (?![0-9]|\.\d)
    (?:\s?(?P<pct>%|％)|\s?(?P<scale>[kKMBG](?![A-Za-z0-9_])|万|亿))?
    (?![A-Za-z_])                           # 不紧接着字母：4096d、3x 这类不是读数
    """, re.X)
SECTION = re.compile(r"(?:§\s*|第\s*)$")
SECTION_AFTER = re.compile(r"^\s*(?:节|小节|章)")
YEAR_NOT = re.compile(r"^\s*(?:个|条|步|字|道|次|份|篇|行|位|维|名|万|亿|token|MB|KB|GB)")
CODE = [re.compile(r"```.*?```", re.S), re.compile(r"`[^`\n]+`")]           # 代码块、行内代码
MATH = re.compile(r"\$\$.*?\$\$|(?<!\\)\$[^$\n]+?(?<!\\)\$", re.S)           # 行间公式、行内公式
LATEX_SCI = re.compile(r"(?<![\d.])(\d+\.\d+)\s*\\times\s*10\^\{?([-−]?\d+)\}?")  # 3.7\times10^{-14}
OTHER = [
    re.compile(r"!?\[[^\]]*\]\([^)]*\)"),         # 链接和图片：去掉地址，保留方括号里的文字
    re.compile(r"<[^>\n]+>"),                     # HTML 标签
    re.compile(r"https?://\S+"),
    re.compile(r"arXiv:\s*\S+", re.I),
    re.compile(r"\d+(?:\.\d+){2,}"),              # 版本号 3.11.7
]
MEASURED_ROW = re.compile(r"\| tiny（2 核 CPU） \| 约 \d+ 秒（实测）")  # nbrun 执行后写入的实测用时


def _blank(text: str, pattern: re.Pattern, keep_link_text: bool = False) -> str:
    """把匹配到的部分换成等长空格（保持位置，句子还能按原文截取）。链接保留方括号里的文字。"""
    def repl(m):
        s = m.group(0)
        if keep_link_text and s.lstrip("!").startswith("["):
            a, b = s.index("["), s.index("]")
            return " " * (a + 1) + s[a + 1:b] + " " * (len(s) - b)
        return " " * len(s)
    return pattern.sub(repl, text)


def _to_decimal(s: str) -> Decimal | None:
    try:
        return Decimal(s.replace(",", "").replace("−", "-"))
    except InvalidOperation:
        return None


def _decimals(s: str) -> int:
    """数字写到小数点后几位（决定比较的容差）；整数末尾的 0 当凑整（1,200 → -2）。"""
    mant = re.split(r"[eE]", s)[0].replace(",", "")
    if "." in mant:
        d = len(mant.split(".")[1])
    else:
        d = -(len(mant) - len(mant.rstrip("0"))) if mant.strip("0") else 0
    exp = re.search(r"[eE]([-+−]?\d+)", s)
    return d - (int(exp.group(1).replace("−", "-")) if exp else 0)


def significant_digits(s: str) -> int:
    mant = re.split(r"[eE]", s)[0].replace(",", "")
    digits = mant.replace(".", "").lstrip("0")
    if "." not in mant:
        digits = digits.rstrip("0")
    return len(digits)


def _code_spans(md: str) -> list[str]:
    return [m.group(0) for pat in CODE for m in pat.finditer(md)]


def prose_numbers(md: str):
    """Markdown 里要检查的数：(原文片段, 数值, 小数位, 是否百分数, 量级, 所在句子)。"""
    text = md
    for pat in CODE:
        text = _blank(text, pat)
    for m in MATH.finditer(text):                # 公式里只查单独一个 a×10^b（a 带小数）的读数，比如 $3.7\times10^{-14}$
        n = LATEX_SCI.fullmatch(m.group(0).strip("$").strip())
        if n:
            raw = f"{n.group(1)}e{n.group(2).replace('−', '-')}"
            yield raw, _to_decimal(raw), _decimals(raw), False, None, _sentence(md, m.start(), m.end())
    text = _blank(text, MATH)
    for pat in OTHER:
        text = _blank(text, pat, keep_link_text=pat is OTHER[0])
    text = _blank(text, MEASURED_ROW)
    # 标题开头的章节号：「## 5.4 …」「### 练习 3.2」
    text = re.sub(r"(?m)^(#+\s*(?:练习\s*)?)([\d.]+)", lambda m: m.group(1) + " " * len(m.group(2)), text)
    for m in NUMBER.finditer(text):
        raw, pct, scale = m.group("num"), bool(m.group("pct")), m.group("scale")
        before, after = text[:m.start()], text[m.end():]
        if SECTION.search(before) or ("." in raw and SECTION_AFTER.match(after)):
            continue
        value = _to_decimal(raw)
        if value is None:
            continue
        if re.fullmatch(r"\d{4}", raw) and 1950 <= value <= 2030 and not pct and not scale and not YEAR_NOT.match(after):
            continue                                # 年份
        sci = "." in raw and bool(re.search(r"[eE]", raw))
        if not (pct or sci or significant_digits(raw) >= 3):
            continue
        yield raw, value, _decimals(raw), pct, scale, _sentence(md, m.start(), m.end())


def _sentence(md: str, start: int, end: int) -> str:
    stops = "。！？\n；"
    a = max(md.rfind(c, 0, start) for c in stops) + 1
    ends = [i for i in (md.find(c, end) for c in stops) if i != -1]
    b = min(ends) + 1 if ends else len(md)
    return re.sub(r"\s+", " ", md[a:b]).strip()[:160]


def output_numbers(text: str) -> list[tuple[Decimal, bool]]:
    """输出文本里的数（去掉千位分隔符）和它后面是否跟着 %。"""
    out = []
    for m in re.finditer(r"(?<![\d.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(\s?%)?", text):
        v = _to_decimal(m.group(1))
        if v is not None:
            out.append((v, bool(m.group(2))))
    return out


def code_numbers(source: str) -> set[Decimal]:
    """代码格子源码里的数（去掉 # 注释；字符串里的数也算，比如 "RTX 4090"）。"""
    try:
        toks = tokenize.generate_tokens(io.StringIO(source).readline)
        kept = [t.string for t in toks if t.type != tokenize.COMMENT]
        code = " ".join(kept)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        code = re.sub(r"#[^\n]*", "", source)
    nums = set()
    for m in re.finditer(r"(?<![\d.])\d[\d_]*(?:\.\d+)?(?:[eE][-+]?\d+)?", code):
        v = _to_decimal(m.group(0).replace("_", ""))
        if v is not None:
            nums.add(v)
    return nums


def _cell_text(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_outputs(nb: dict) -> str:
    parts = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(_cell_text({"source": out["text"]}))
            for mime in ("text/plain", "text/markdown", "text/html"):
                if mime in out.get("data", {}):
                    parts.append(_cell_text({"source": out["data"][mime]}))
    return "\n".join(parts)


def _close(a: Decimal, b: Decimal, decimals: int) -> bool:
    return abs(abs(a) - abs(b)) <= Decimal(5) * Decimal(10) ** (-decimals - 1) + Decimal("1e-12")


def _matches(value: Decimal, decimals: int, pct: bool, scale: str | None,
             outputs: list[tuple[Decimal, bool]]) -> bool:
    candidates = [(value, decimals)]
    if scale:
        factor = _SCALE[scale]
        candidates.append((value * factor, decimals - len(str(factor)) + 1))
    for v, out_pct in outputs:
        for x, d in candidates:
            if _close(v, x, d):
                return True
            if pct and _close(v * 100, x, d):
                return True
            if not pct and out_pct and _close(v / 100, x, d):
                return True
    return False


def check_notebook(nb: dict, name: str = "<notebook>", allowed=()) -> list[tuple[str, int, str, str]]:
    """返回正文里对不上输出的数：[(notebook, 格子编号, 数字, 句子), …]。"""
    outputs = output_numbers(notebook_outputs(nb))
    consts = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            consts |= code_numbers(_cell_text(cell))
        elif cell.get("cell_type") == "markdown":          # Markdown 里的代码（`0.995`、练习里的调用）也是常量
            for span in _code_spans(_cell_text(cell)):
                consts |= code_numbers(span.strip("`"))
    allowed = list(allowed)
    bad = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "markdown":
            continue
        md = _cell_text(cell)
        for raw, value, decimals, pct, scale, sentence in prose_numbers(md):
            if (value / 100 if pct else value) in consts:
                continue
            if any(raw in s and s in md for s in allowed):
                continue
            if _matches(value, decimals, pct, scale, outputs):
                continue
            shown = raw + (" %" if pct else "") + (f" {scale}" if scale else "")
            bad.append((name, i, shown, sentence))
    return bad


def _format(bad) -> str:
    return "\n".join(f"  {nb} 第 {i} 格：{num!r} 不在任何输出里 ——「{sentence}」" for nb, i, num, sentence in bad)


# ---------------------------------------------------------------------------------------------------------------
# 测试


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT / "notebooks").as_posix())
def test_prose_numbers_come_from_outputs(path):
    name = path.relative_to(ROOT / "notebooks").as_posix()
    nb = json.loads(path.read_text(encoding="utf-8"))
    bad = check_notebook(nb, name, [s for s, _ in ALLOWED.get(name, [])])
    assert not bad, (f"{name}：正文里有 {len(bad)} 个实测数字在输出里找不到（用代码格子从变量生成这句话，"
                     f"或删掉 / 改成定性说法；真常量才写进 ALLOWED）：\n" + _format(bad))


def test_allow_list_is_small_justified_and_used():
    entries = [(nb, s, why) for nb, items in ALLOWED.items() for s, why in items]
    assert len(entries) < 25, f"ALLOWED 有 {len(entries)} 条，太多了：请让这些数来自输出"
    for nb, s, why in entries:
        assert why.strip(), f"ALLOWED[{nb!r}] 的 {s!r} 没写理由"
        path = ROOT / "notebooks" / nb
        assert path.exists(), f"ALLOWED 里的 {nb} 不存在"
        md = "\n".join(_cell_text(c) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                       if c["cell_type"] == "markdown")
        assert s in md, f"ALLOWED[{nb!r}] 的 {s!r} 已不在正文里：请删掉这一条"


def _tiny_nb(markdown: str, outputs: list[dict], code: str = "print(loss)") -> dict:
    return {"cells": [{"cell_type": "code", "source": code, "outputs": outputs, "metadata": {}},
                      {"cell_type": "markdown", "source": markdown, "metadata": {}}]}


def _stream(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def test_checker_catches_a_wrong_number():
    nb = _tiny_nb("训练 250 步后，损失降到 9.87。", [_stream("step 250 loss 3.2100\n")])
    bad = check_notebook(nb, "demo.ipynb")
    assert [(n, i, num) for n, i, num, _ in bad] == [("demo.ipynb", 1, "9.87")]
    assert "损失降到 9.87" in bad[0][3]
    assert "9.87" in _format(bad) and "demo.ipynb 第 1 格" in _format(bad)


def test_checker_passes_when_an_output_has_the_number():
    assert check_notebook(_tiny_nb("损失降到 9.87。", [_stream("loss 9.8712\n")])) == []
    md = {"output_type": "display_data", "metadata": {},
          "data": {"text/markdown": "损失降到 **9.87**", "text/plain": "<IPython.core.display.Markdown object>"}}
    assert check_notebook(_tiny_nb("损失降到 9.87。", [md])) == []


def test_checker_rules():
    out = [_stream("acc 0.6132  tokens 1234567  ratio 61.3%  n=254\n")]
    ok = ["准确率 61 %。", "准确率 61%。", "准确率 0.613。", "约 1,234,567 个 token。", "约 1.23 M 个 token。",
          "第 12.3 节", "见 §10.25", "2017 年的论文", "（Vaswani et al., 2017）", "`lr = 3.14159`", "$e^{2.718}$",
          "在 H100 上", "共 254 道题", "比例 61.3 %", "约 120 万"]
    for text in ok:
        assert check_notebook(_tiny_nb(text, out)) == [], text
    wrong = ["准确率 62 %。", "准确率 0.614。", "共 255 道题", "约 1.25 M 个 token。", "降到 9.87"]
    for text in wrong:
        assert len(check_notebook(_tiny_nb(text, out))) == 1, text
    # 代码里的常量不算测量结果；注释里的数不算常量
    assert check_notebook(_tiny_nb("学习率 0.003，τ = 0.25", [], code="lr = 3e-3\ntau = 0.25")) == []
    assert len(check_notebook(_tiny_nb("损失 3.45", [], code="x = 1  # 损失 3.45"))) == 1
    # 百分数只与源码里的 p/100 算同一个常量；源码里碰巧有个 1.5 不能替「1.5%」作证
    assert check_notebook(_tiny_nb("MFU 假设为 30%", [], code="ASSUMED_MFU = 0.30")) == []
    assert len(check_notebook(_tiny_nb("困惑度升高 1.5%", [], code="plt.figure(figsize=(1.5, 3))"))) == 1
    # Markdown 里的代码也是常量
    assert check_notebook(_tiny_nb("| `0.995` | 占 99.5% 的常见字 |", [])) == []
    # 科学记数：正文里和单独成公式的都查；由常量算出的公式不查
    sci = [_stream("logits 最大差 8.6e-06，梯度 3.71e-14\n")]
    assert check_notebook(_tiny_nb("只差 8.6e-06，梯度 $3.7\\times10^{-14}$", sci)) == []
    assert len(check_notebook(_tiny_nb("只差 6.7e-06", sci))) == 1
    assert len(check_notebook(_tiny_nb("梯度只剩 $5.7\\times10^{-4}$", sci))) == 1
    assert check_notebook(_tiny_nb("$6 \\times 7\\times10^9 \\approx 4.2\\times10^{10}$，$64/10944 \\approx 0.6\\%$", [])) == []
    # 「预计用时」表里由 nbrun 写入的实测用时
    assert check_notebook(_tiny_nb("| tiny（2 核 CPU） | 约 161 秒（实测） |", [])) == []
    # 允许清单
    assert check_notebook(_tiny_nb("共 30,883 条成语", []), allowed=["30,883 条成语"]) == []
