"""评测（evaluation）：一个小中文模型到底知道什么、会做什么。命令行：

    python -m course_lib.eval --model base          # 参考基座模型（assets/base_model）
    python -m course_lib.eval --model sft           # 第 06 章的 SFT 模型（data/runs/sft，缺了会先训练）
    python -m course_lib.eval --model chat          # 参考对话模型（assets/chat_model）；aligned = 第 10 章对齐后的模型
    python -m course_lib.eval --model 文件夹 [--tasks knowledge,bpc] [--limit 100]   # course_lib 或 transformers 的文件夹

按 C-Eval、CMMLU、lm-eval 给基座模型打分的方式：
- 知识（选择题，四选一，题库见 course_lib.eval_items）：把每个选项接在题面后面，算模型给它的对数似然
  （log-likelihood），选最大的。raw = 选项所有 token 的对数概率之和；norm = 再除以选项的字数
  （长度归一化，lm-eval 的 acc_norm；不同分词器之间可比）。每个任务分「见过 / 没见过」两半。
- 语言建模：每个字的比特数（bits per character, bpc）= 总的负对数似然 / ln 2 / 字数。
  不像每个 token 的损失，它和分词器无关，可以在不同模型之间比较。
- 对话模型的技能（生成，贪心解码）：两位数加减法、没见过的成语的拼音（按字算）、800 多条没见过的评论的情感、
  诗句接续、是否正常结束（以 <|im_end|> 停下）、身份（回答里有没有「小雁」）。

每个比例都有 95 % 的 Wilson 置信区间（比例的标准做法，n 小或接近 0/1 时也可靠）和随机猜的水平（chance）；
按字计的比例和 bpc 的区间按题目（文档）做比率估计（同一题的几个字不独立，不能当成独立样本）。
外部基线在同一批题上：第 01 章的计数二元模型（选择题和 bpc），在 train 上重新训练的 SnowNLP 朴素贝叶斯（情感），
联网时可以用 --model Qwen/Qwen2.5-0.5B-Instruct 评一个现成的模型做对照（同一条代码路径，测试里用本地的
transformers 文件夹代替）。结果写成 JSON 和 Markdown 的成绩单（report card）。
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import eval_items as items
from .device import eval_mode

EVAL_VERSION = 1
Z95 = 1.959963984540054
SKILL_TASKS = ("arithmetic", "sentiment", "pinyin", "next_line", "identity")
TASKS = items.CHOICE_TASKS + ("bpc",) + SKILL_TASKS
GROUPS = {"knowledge": items.CHOICE_TASKS, "skills": SKILL_TASKS, "all": TASKS}
SKILL_LIMITS = {"arithmetic": 300, "sentiment": None, "pinyin": 200, "next_line": 100, "identity": None}
MAX_NEW_TOKENS = {"arithmetic": 12, "sentiment": 6, "pinyin": 32, "next_line": 16, "identity": 40}
BPC_DOMAINS = ("news", "poetry", "reviews")
BPC_CHARS = 20_000          # 每个领域取验证集开头这么多字（整篇文档）
BIGRAM_SMOOTHING = (1.0, 0.1, 0.01)   # 计数二元模型的加 α 平滑：在 mix 的 val 上挑最好的一个


# ---------------------------------------------------------------- 置信区间
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """k/n 的 Wilson 置信区间（默认 95 %）。n = 0 时返回 (0, 1)。"""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else min(lo, p)), (1.0 if k == n else max(hi, p))   # 浮点误差不能让区间不含 p


def proportion(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": int(k), "n": int(n), "value": k / n if n else float("nan"), "lo": lo, "hi": hi}


def difference(a: dict, b: dict) -> dict:
    """两个独立比例之差 a − b 和它的 95 % 区间（Newcombe 1998 的方法 10：由两个 Wilson 区间合成）。"""
    pa, pb = a["k"] / a["n"], b["k"] / b["n"]
    (la, ua), (lb, ub) = wilson(a["k"], a["n"]), wilson(b["k"], b["n"])
    d = pa - pb
    return {"value": d, "lo": d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2),
            "hi": d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)}


def ratio(numerators, denominators) -> dict:
    """Σx / Σy 和它的 95 % 区间（比率估计的线性化方差，按题目/文档聚类）。"""
    x, y = [float(v) for v in numerators], [float(v) for v in denominators]
    m, total = len(x), sum(y)
    r = sum(x) / total if total else float("nan")
    if m < 2 or not total:
        return {"value": r, "lo": float("nan"), "hi": float("nan"), "n": m}
    se = math.sqrt(sum((a - r * b) ** 2 for a, b in zip(x, y)) / (m * (m - 1))) / (total / m)
    return {"value": r, "lo": r - Z95 * se, "hi": r + Z95 * se, "n": m}


# ---------------------------------------------------------------- 被评测的模型
class Subject:
    """被评测的模型：course_lib 的 Llama 或 transformers 的模型，统一成「编码、打分、对话」三件事。"""

    def __init__(self, model, tokenizer, description: str, info: dict):
        from .chat import make_backend
        from .hf_adapter import HFCausalLM
        self.model, self.tokenizer, self.description, self.info = model, tokenizer, description, info
        self.is_hf = hasattr(model, "generation_config")
        self.lm = HFCausalLM(model) if self.is_hf else model
        self.backend = make_backend(model, tokenizer)
        self.context_length = self.backend.context_length
        if self.is_hf:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            self.start_ids = [int(start)] if start is not None else []
            self.vocab_size = int(model.config.vocab_size)
        else:
            self.start_ids = [tokenizer.bos_id]
            self.vocab_size = model.config.vocab_size
        self.chat = bool(info.get("chat"))

    def encode(self, text: str) -> list[int]:
        if self.is_hf:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return self.tokenizer.encode(text)

    def reply(self, messages, max_new_tokens: int) -> tuple[str, bool]:
        """贪心解码一条回复：(文字, 是否以停止 token 结束)。"""
        from .generate import GREEDY
        new = list(self.backend.stream(self.backend.encode_chat(messages), max_new_tokens, None, GREEDY))
        ended = bool(new) and new[-1] in self.backend.stop_ids
        return self.backend.decode(new[:-1] if ended else new).strip(), ended


def load_subject(name: str, device="cpu") -> Subject:
    """--model 的值 → Subject。'base' = 参考基座模型，'sft' = 第 06 章的 SFT 模型，'chat' = 参考对话模型，
    'aligned' = 第 10 章对齐后的模型，其余是文件夹或 Hub 上的模型名。"""
    from .chat_models import load_chat_model, resolve_alias
    from .files import read_json
    from .reference import reference_dir
    if not isinstance(name, str) or not name.strip():
        raise ValueError("--model 要给一个模型：base（参考基座模型）、sft（第 06 章的 SFT 模型）、chat（参考对话模型）、"
                         "aligned（第 10 章对齐后的模型）、"
                         "course_lib 或 transformers 的模型文件夹，或联网时 Hub 上的模型名（如 Qwen/Qwen2.5-0.5B-Instruct）。")
    alias = None
    if name == "base":
        path = reference_dir()
    elif name == "sft":
        from .sft import load_sft_model, sft_model_dir
        load_sft_model(device="cpu")                  # 缺了（或基座更新过）就按第 06 章的配置训练一个
        path = sft_model_dir()
    else:
        alias = resolve_alias(name)
        path = alias or Path(name).expanduser()
    source = name if alias is not None else str(path) if path.exists() else name     # 简称让 load_chat_model 写出全名
    model, tokenizer, description = load_chat_model(source, device=device)
    from .paths import repo_root
    root, shown = repo_root(), str(path)
    if root is not None and path.resolve().is_relative_to(root.resolve()):
        shown = path.resolve().relative_to(root.resolve()).as_posix()     # 成绩单里写仓库内的相对路径
    description = {"base": "参考基座模型", "sft": "第 06 章的 SFT 模型（小雁）"}.get(name, description)
    info = {"name": name, "path": shown, "params": sum(p.numel() for p in model.parameters())}
    config = path / "config.json"
    if hasattr(model, "generation_config"):
        info.update(kind="transformers", chat=bool(getattr(tokenizer, "chat_template", None)))
    else:
        meta = read_json(config, "模型的 config.json", "请用 course_lib 保存的模型文件夹。")
        info.update(kind="course_lib", chat="sft" in meta, corpus=(meta.get("recipe") or {}).get("corpus"))
        if (path / "metrics.json").exists():
            metrics = read_json(path / "metrics.json", "模型的 metrics.json", "它是训练脚本写的。")
            info["tokens_seen"] = metrics.get("tokens_seen")
        if "sft" in meta:
            from .reference import reference_metrics
            from .sft import _base_fingerprint
            info["sft"] = meta["sft"].get("config")
            if meta.get("base_sha256") == _base_fingerprint():
                from .reference import REFERENCE_CONFIG
                info["base"] = "assets/base_model"
                info["corpus"] = REFERENCE_CONFIG["corpus"]
                info["tokens_seen"] = reference_metrics().get("tokens_seen")
    return Subject(model, tokenizer, description, info)


# ---------------------------------------------------------------- 对数似然：一批 (ids, 从第几个 token 开始计分)
@torch.no_grad()
def sum_logprobs(subject: Subject, pairs: list[tuple[list[int], int]], progress: bool = True, desc: str = "打分"):
    """每个 (ids, first)：ids[first:] 这些 token 在前文条件下的对数概率之和（nats）。len(ids) ≤ 上下文长度。"""
    from .generate import _logits
    from .report import progress_bar
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    out = [0.0] * len(pairs)
    device = next(subject.model.parameters()).device
    budget = 2 ** 25                                  # 每批 B × T × V 的上限（约 128 MB 的 float32 logits）
    batches, i = [], 0
    while i < len(order):
        T = len(pairs[order[min(i + 63, len(order) - 1)]][0])
        B = max(1, min(64, budget // max(1, T * subject.vocab_size)))
        batches.append(order[i:i + B])
        i += B
    with eval_mode(subject.lm):
        for batch in progress_bar(batches, enabled=progress, desc=desc, leave=False):
            T = max(len(pairs[j][0]) for j in batch)
            idx = torch.zeros(len(batch), T, dtype=torch.long)
            for r, j in enumerate(batch):
                idx[r, :len(pairs[j][0])] = torch.tensor(pairs[j][0])
            logp = F.log_softmax(_logits(subject.lm(idx.to(device))).float(), dim=-1)
            for r, j in enumerate(batch):
                ids, first = pairs[j]
                target = torch.tensor(ids[first:], device=logp.device)
                out[j] = logp[r, first - 1:len(ids) - 1].gather(1, target[:, None]).sum().item()
    return out


def choice_pairs(subject: Subject, choices: list) -> list[tuple[list[int], int]]:
    pairs = []
    for c in choices:
        context = subject.start_ids + subject.encode(c.context)
        for option in c.options:
            pairs.append((context + subject.encode(option), len(context)))
    return pairs


def score_choices(choices: list, logprobs: list[float]) -> dict:
    """四个选项的对数似然 → raw / norm 两种预测的正确数。"""
    k_raw = k_norm = 0
    for i, c in enumerate(choices):
        lp = logprobs[i * len(c.options):(i + 1) * len(c.options)]
        raw = max(range(len(lp)), key=lambda j: lp[j])
        norm = max(range(len(lp)), key=lambda j: lp[j] / len(c.options[j]))
        k_raw += raw == c.answer
        k_norm += norm == c.answer
    n = len(choices)
    return {"n": n, "acc": proportion(k_raw, n), "acc_norm": proportion(k_norm, n), "chance": 1 / items.N_OPTIONS}


def document_pairs(subject: Subject, text: str) -> list[tuple[list[int], int]]:
    """一篇文档 → 若干 (ids, first)：长文档按窗口切开，每个窗口带上前面半个窗口的上下文，所有 token 恰好计分一次。"""
    ids = subject.start_ids + subject.encode(text)
    window = subject.context_length
    if len(ids) <= window:
        return [(ids, len(subject.start_ids))]
    stride, pairs, s = window // 2, [], len(subject.start_ids)
    while s < len(ids):
        begin = max(0, min(s - stride, len(ids) - window))
        end = min(len(ids), begin + window)
        pairs.append((ids[begin:end], s - begin))
        s = end
    return pairs


# ---------------------------------------------------------------- 基线：第 01 章的计数二元模型
class CountingBigram:
    """字级计数二元模型（第 01 章的 bigram_counts + bigram_probs），在和被评测模型相同的训练语料上数出来。"""

    def __init__(self, corpus: str = "mix"):
        from .bigram import bigram_counts, bigram_probs
        from .data import load_corpus
        from .tokenizer import CharTokenizer
        train, val = load_corpus(corpus, "train"), load_corpus(corpus, "val")
        self.tokenizer = CharTokenizer.from_text(train)
        counts = bigram_counts(torch.tensor(self.tokenizer.encode(train)), self.tokenizer.vocab_size)
        val_ids = torch.tensor(self.tokenizer.encode(val[:200_000]))
        best = None
        for alpha in BIGRAM_SMOOTHING:
            logp = bigram_probs(counts, alpha).log()
            nll = -logp[val_ids[:-1], val_ids[1:]].mean().item()
            if best is None or nll < best[0]:
                best = (nll, alpha, logp)
        _, self.smoothing, self.logp = best
        self.corpus = corpus

    def logprob(self, prev: str, text: str) -> float:
        ids = self.tokenizer.encode(prev[-1:] + text)
        t = torch.tensor(ids)
        return self.logp[t[:-1], t[1:]].sum().item()


def _bpc_documents(domain: str) -> list[str]:
    from .data import load_corpus
    from .knowledge import load_knowledge_corpus
    text = load_knowledge_corpus("classics", "val") if domain == "poetry" else load_corpus(domain, "val")
    docs, total = [], 0
    for d in text.splitlines():
        if total >= BPC_CHARS:
            break
        docs.append(d)
        total += len(d)
    return docs


# ---------------------------------------------------------------- 技能（对话模型，生成）
def _skill(subject: Subject, task: str, limit: int | None, progress: bool) -> tuple[dict, list[dict]]:
    from .report import progress_bar
    from .sft_data import (
        arithmetic_example,
        arithmetic_problems,
        idiom_examples,
        sentiment_example,
    )
    from .sft_eval import score_reply
    n_max = limit if limit is not None else SKILL_LIMITS[task]
    if task == "arithmetic":
        problems = sorted(arithmetic_problems("test"), key=lambda p: items._rank("arith:" + "".join(map(str, p))))
        cases = [(arithmetic_example(*p), None) for p in problems[:n_max]]
    elif task == "sentiment":
        cases = [(sentiment_example(r.text, r.label), None) for r in items.sentiment_reviews(n_max)]
    elif task == "pinyin":
        cases = [(idiom_examples(i, {})[1], None) for i in items.pinyin_idioms(n_max)]
    elif task == "next_line":
        cases = [({"task": "next_line", "messages": [{"role": "user", "content": f"「{a}」的下一句是什么？"}],
                   "answer": b}, half) for half in items.HALVES for a, b in items.poem_prompts(half, n_max)]
    else:
        cases = [({"task": "identity", "messages": [{"role": "user", "content": p}], "answer": items.IDENTITY_NAME}, None)
                 for p in items.IDENTITY_PROMPTS[:n_max]]
    samples = []
    for ex, half in progress_bar(cases, enabled=progress, desc=task, leave=False):
        messages = [m for m in ex["messages"] if m["role"] != "assistant"]
        reply, ended = subject.reply(messages, MAX_NEW_TOKENS[task])
        answer = ex["answer"]
        if task == "pinyin":
            want, got = answer.split(), reply.rstrip("。").split()
            score = (sum(a == b for a, b in zip(want, got)), len(want))
        elif task == "next_line":
            score = (int(reply.strip("「」。，！？ ") == answer), 1)
        elif task == "identity":
            score = (int(answer in reply), 1)
        else:
            score = (int(score_reply(ex, reply)), 1)
        samples.append({"task": task, "half": half, "prompt": messages[-1]["content"], "reply": reply,
                        "answer": answer, "score": score, "ended": ended})
    return _summarise_skill(task, samples), samples


def _summarise_skill(task: str, samples: list[dict]) -> dict:
    k = sum(s["score"][0] for s in samples)
    n = sum(s["score"][1] for s in samples)
    if task == "pinyin":   # 按字计：同一个成语的几个字不独立，区间按成语聚类
        acc = {**ratio([s["score"][0] for s in samples], [s["score"][1] for s in samples]), "k": k, "chars": n}
        lo, hi = wilson(k, n)              # 全对或全错时比率估计的区间缩成一点：至少取按字的 Wilson 区间
        acc["lo"], acc["hi"] = min(acc["lo"], lo), max(acc["hi"], hi)
    else:
        acc = proportion(k, n)
    out = {"n": len(samples), "acc": acc, "chance": 0.5 if task == "sentiment" else 0.0,
           "format": proportion(sum(s["ended"] for s in samples), len(samples))}
    if task == "next_line":
        out["halves"] = {h: proportion(sum(s["score"][0] for s in samples if s["half"] == h),
                                       sum(1 for s in samples if s["half"] == h)) for h in items.HALVES}
    return out


def _snownlp_sentiment(samples: list[dict]) -> dict:
    """SnowNLP 的朴素贝叶斯在 train 划分上重新训练，在同一批评论（同样截断）上的准确率。"""
    from .baselines import SnowNLPSentiment
    from .data import load_reviews
    from .sft_data import SENTIMENT_LABELS
    clf = SnowNLPSentiment(cache=True).fit(load_reviews("train"))
    texts = [s["prompt"].split("\n", 1)[1] for s in samples]
    probs = clf.predict_proba(texts)
    k = sum((p > 0.5) == (s["answer"] == SENTIMENT_LABELS[1]) for p, s in zip(probs, samples))
    positive = sum(s["answer"] == SENTIMENT_LABELS[1] for s in samples) / max(len(samples), 1)
    return {"snownlp": proportion(k, len(samples)), "majority": max(positive, 1 - positive)}


# ---------------------------------------------------------------- 主流程
def parse_tasks(spec) -> tuple[str, ...]:
    """'all'、'knowledge'、'skills'，或逗号分隔的任务名 → 任务元组（按 TASKS 的顺序）。"""
    if spec is None:
        return TASKS
    if not isinstance(spec, str):
        spec = ",".join(spec)
    wanted: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in GROUPS:
            wanted += GROUPS[part]
        elif part in TASKS:
            wanted.append(part)
        else:
            raise ValueError(f"不认识的评测任务 {part!r}。可选：{', '.join(TASKS)}；或者一组：{', '.join(GROUPS)}。")
    if not wanted:
        raise ValueError(f"--tasks 是空的。可选：{', '.join(TASKS)}；或者一组：{', '.join(GROUPS)}。")
    return tuple(t for t in TASKS if t in wanted)


def evaluate(subject: Subject, tasks=None, limit: int | None = None, baselines: bool = True,
             progress: bool = True) -> dict:
    """在 tasks 上评测 subject，返回成绩单的 JSON（见 report_card_markdown）。limit：每个任务（每一半）最多几道题。"""
    from .checks import check_int
    from .generate import generation_speed
    from .report import environment
    tasks = parse_tasks(tasks)
    check_int(limit, "limit", 1, allow_none=True)
    t0 = time.perf_counter()
    result = {"eval_version": EVAL_VERSION, "model": {**subject.info, "description": subject.description},
              "tasks": list(tasks), "limit": limit, "knowledge": {}, "bpc": {}, "skills": {}, "notes": []}
    bigram = None
    if baselines and (set(tasks) & set(items.CHOICE_TASKS) or "bpc" in tasks):
        corpus = subject.info.get("corpus") or "mix"
        from .data import CORPORA
        bigram = CountingBigram(corpus if corpus in CORPORA else "mix")
        result["baseline_bigram"] = {"corpus": bigram.corpus, "smoothing": bigram.smoothing}
    for task in (t for t in tasks if t in items.CHOICE_TASKS):
        result["knowledge"][task] = {}
        for half in items.HALVES:
            choices = items.choice_items(task, half, limit)
            row = score_choices(choices, sum_logprobs(subject, choice_pairs(subject, choices), progress,
                                                      f"{task}/{half}"))
            if bigram is not None:
                lp = [bigram.logprob(c.context, o) for c in choices for o in c.options]
                b = score_choices(choices, lp)
                row["bigram"] = {"acc": b["acc"], "acc_norm": b["acc_norm"]}
            result["knowledge"][task][half] = row
    if "bpc" in tasks:
        for domain in BPC_DOMAINS:
            docs = _bpc_documents(domain)[:limit]
            pairs = [document_pairs(subject, d) for d in docs]
            flat = sum_logprobs(subject, [p for ps in pairs for p in ps], progress, f"bpc/{domain}")
            bits, i = [], 0
            for ps in pairs:
                bits.append(-sum(flat[i:i + len(ps)]) / math.log(2))
                i += len(ps)
            row = {"docs": len(docs), "chars": sum(map(len, docs)), "bpc": ratio(bits, [len(d) for d in docs]),
                   "doc_bits": [round(b, 4) for b in bits]}   # 每篇文档的总比特数：两个模型可以逐篇配对比较
            if bigram is not None:
                bb = [-bigram.logprob("\n", d) / math.log(2) for d in docs]
                row["bigram"] = ratio(bb, [len(d) for d in docs])
            result["bpc"][domain] = row
    skills = [t for t in tasks if t in SKILL_TASKS]
    transcript = []
    if skills and not subject.chat:
        result["notes"].append("这是没有学过对话的基座模型：生成类的技能题（" + "、".join(skills) + "）跳过。")
    elif skills:
        all_samples = []
        for task in skills:
            row, samples = _skill(subject, task, limit, progress)
            if task == "sentiment" and baselines:
                row["baselines"] = _snownlp_sentiment(samples)
            result["skills"][task] = row
            all_samples += samples
            transcript += samples[:2]
        result["skills_format"] = proportion(sum(s["ended"] for s in all_samples), len(all_samples))
    if not transcript:
        from .generate import stream
        for prompt in ("床前明月光，", "今天的天气"):
            ids = subject.start_ids + subject.encode(prompt)
            new = list(stream(subject.lm, ids, 32, temperature=0.0, stop_ids=subject.backend.stop_ids))
            transcript.append({"prompt": prompt, "reply": subject.backend.decode(
                [t for t in new if t not in subject.backend.stop_ids])})
    result["transcript"] = [{"prompt": s["prompt"], "reply": s["reply"]} for s in transcript]
    prompt = subject.start_ids + subject.encode("今天")
    result["decode_tokens_per_s"] = generation_speed(subject.lm, prompt, 32, repeats=2)
    result["environment"] = {k: v for k, v in environment().items() if k in ("python", "platform", "torch", "transformers")}
    result["environment"]["threads"] = torch.get_num_threads()
    result["seconds"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------- 成绩单
TASK_NAMES = {"idiom_meaning": "成语释义", "poem_next": "诗句接续", "xiehouyu": "歇后语", "char_meaning": "字典释义",
              "arithmetic": "两位数加减法（精确匹配）", "sentiment": "评论情感（正面/负面）",
              "pinyin": "没见过的成语的拼音（按字）", "next_line": "诗句接续（生成，精确匹配）",
              "identity": "身份（回答里有「小雁」）"}
DOMAIN_NAMES = {"news": "新闻（人民日报 val）", "poetry": "古诗文（classics val）", "reviews": "评论（reviews val）"}


def _missing(p: dict) -> bool:
    return p.get("n", 0) == 0 or any(p.get(k) is None or p[k] != p[k] for k in ("value", "lo", "hi"))


def _pct(p: dict) -> str:
    if _missing(p):
        return "—"
    return f"{p['value']:.1%} [{p['lo']:.1%}, {p['hi']:.1%}]"


def _num(p: dict) -> str:
    if _missing(p):
        return "—"
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


def _gap(d: dict) -> str:
    return f"{d['value'] * 100:+.1f} 点 [{d['lo'] * 100:+.1f}, {d['hi'] * 100:+.1f}]"


def report_card_markdown(r: dict) -> str:
    """evaluate() 的结果 → Markdown 成绩单。"""
    m = r["model"]
    lines = [f"# 成绩单：{m['name']}", "", f"由 `python -m course_lib.eval --model {m['name']}"
             + (f" --limit {r['limit']}" if r.get("limit") else "") + "` 生成（评测版本 "
             f"{r['eval_version']}），所有数字都是这次运行实测的；方括号是 95 % 置信区间。", "",
             "| 项目 | 值 |", "|---|---|", f"| 模型 | {m['description']}（`{m['path']}`） |",
             f"| 参数量 | {m['params'] / 1e6:.2f} M |"]
    if m.get("tokens_seen"):
        lines.append(f"| 预训练看过的 token | {m['tokens_seen'] / 1e6:.2f} M（语料 {m.get('corpus') or '未知'}） |")
    if m.get("sft"):
        s = m["sft"]
        lines.append(f"| SFT | {s.get('max_steps')} 步 × {s.get('batch_size')} 条（每条 ≤ {s.get('max_len')} token） |")
    lines += [f"| 对话模型 | {'是' if m.get('chat') else '否'} |",
              f"| 生成速度 | {r['decode_tokens_per_s']:.0f} token/s（贪心，KV 缓存，{r['environment']['threads']} 线程 CPU） |",
              f"| 评测用时 | {r['seconds']:.0f} 秒 |", ""]
    if r["knowledge"]:
        lines += ["## 知识（四选一，按对数似然选）", "",
                  "「见过」= 题目原文在课程的预训练语料（train 划分）里；「没见过」= 原文在 test 划分、"
                  "且没有一个分句出现在任何训练文本里。随机猜是 25 %。raw 按选项的总对数概率，norm 再除以字数。", ""]
        if m.get("corpus") == "course":
            from .knowledge import UPWEIGHT
            lines += [f"这个模型在 course 语料上预训练：「见过」那一半的原文在里面各重复了 {UPWEIGHT} 遍（名篇也是），"
                      "「没见过」的一遍也没有；两半的题是按同样的规则从 train / test 划分里抽的。", ""]
        if m.get("corpus") == "mix":
            lines += ["注意：这个模型只在 mix（新闻 + 评论 + 成语）上预训练过，古诗、歇后语、字典「见过」的一半它其实也没读过；"
                      "只有成语释义的两半是真正的「读过 / 没读过」。", ""]
        header = "| 任务 | 一半 | n | raw | norm |" + (" 二元模型 raw | 二元模型 norm |" if "baseline_bigram" in r else "")
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for task, halves in r["knowledge"].items():
            for half, row in halves.items():
                cells = [TASK_NAMES[task], "见过" if half == "seen" else "没见过", str(row["n"]),
                         _pct(row["acc"]), _pct(row["acc_norm"])]
                if "bigram" in row:
                    cells += [_pct(row["bigram"]["acc"]), _pct(row["bigram"]["acc_norm"])]
                lines.append("| " + " | ".join(cells) + " |")
            if set(halves) == set(items.HALVES):
                gaps = [_gap(difference(halves["seen"][k], halves["unseen"][k])) for k in ("acc", "acc_norm")]
                lines.append("| 　差：见过 − 没见过 | | | " + " | ".join(gaps) + " |"
                             + (" | |" if "baseline_bigram" in r else ""))
        lines += ["", "差的区间是两个独立比例之差的 95 % 区间（Newcombe 方法 10）；区间不含 0，两半才算真有差别。", ""]
    if r["bpc"]:
        lines += ["## 语言建模：每个字的比特数（bpc，越低越好）", "",
                  "与分词器无关，不同模型可以直接比较。区间按文档做比率估计。", "",
                  "| 文本 | 文档 | 字数 | 模型 | 计数二元模型 |", "|---|---|---|---|---|"]
        for domain, row in r["bpc"].items():
            lines.append(f"| {DOMAIN_NAMES[domain]} | {row['docs']} | {row['chars']:,} | {_num(row['bpc'])} | "
                         f"{_num(row['bigram']) if 'bigram' in row else '—'} |")
        if "baseline_bigram" in r:
            b = r["baseline_bigram"]
            lines += ["", f"计数二元模型（第 01 章）在 {b['corpus']} 的 train 上数出来，加 {b['smoothing']} 平滑（在 val 上挑的）。"]
        lines.append("")
    if r["skills"]:
        lines += ["## 技能（对话，贪心解码）", "", "| 任务 | n | 正确率 | 随机/基线 | 正常结束 |", "|---|---|---|---|---|"]
        for task, row in r["skills"].items():
            base = f"{row['chance']:.0%}"
            if "baselines" in row:
                base = (f"SnowNLP {_pct(row['baselines']['snownlp'])}；总猜多数类 {row['baselines']['majority']:.1%}")
            acc = _pct(row["acc"]) if task != "pinyin" else f"{_pct({**row['acc'], 'n': row['n']})}（{row['acc']['chars']} 个字）"
            lines.append(f"| {TASK_NAMES[task]} | {row['n']} | {acc} | {base} | {_pct(row['format'])} |")
            if "halves" in row:
                lines.append(f"| 　其中见过 / 没见过 | | {_pct(row['halves']['seen'])} / {_pct(row['halves']['unseen'])} | | |")
        if "skills_format" in r:
            lines += ["", f"所有生成里以结束符停下的比例：{_pct(r['skills_format'])}。"]
        lines.append("")
    lines += ["外部对照：联网时 `python -m course_lib.eval --model Qwen/Qwen2.5-0.5B-Instruct --name qwen` 用同一批题、"
              "同一段代码评一个现成的 0.5 B 模型（本仓库离线构建，没有提交它的成绩单）。", ""]
    for note in r["notes"]:
        lines += [f"> {note}", ""]
    lines += ["## 对话记录（节选）", ""]
    for s in r["transcript"]:
        lines += [f"- **提示**：{s['prompt']!s}".replace("\n", " "), f"  **回复**：{s['reply'] or '（空）'}".replace("\n", " ")]
    env = r["environment"]
    lines += ["", f"环境：Python {env.get('python')}，torch {env.get('torch')}，{env.get('platform')}。", ""]
    return "\n".join(lines)


def compare_markdown(reports: dict[str, dict]) -> str:
    """几张成绩单并排的一张表（README 用；表里每个数都来自这些 JSON）。reports：{列名: evaluate() 的结果}。"""
    names = list(reports)
    rows = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label, cell):
        rows.append(f"| {label} | " + " | ".join(cell(r) for r in reports.values()) + " |")

    row("参数量", lambda r: f"{r['model']['params'] / 1e6:.2f} M")
    row("预训练读过的 token", lambda r: f"{r['model']['tokens_seen'] / 1e6:.2f} M（{r['model'].get('corpus')}）"
        if r["model"].get("tokens_seen") else "—")
    domains = [d for d in DOMAIN_NAMES if all(d in (r.get("bpc") or {}) for r in reports.values())]
    for d in domains:
        row(f"bpc：{DOMAIN_NAMES[d]}", lambda r, d=d: _num(r["bpc"][d]["bpc"]))
    if len(reports) == 2:   # 两个模型在同一批文档上：逐篇配对的差（比两个独立区间灵敏得多）
        a, b = reports.values()
        for d in domains:
            ra, rb = a["bpc"][d], b["bpc"][d]
            if "doc_bits" in ra and "doc_bits" in rb and ra["chars"] == rb["chars"]:
                bits = [y - x for x, y in zip(ra["doc_bits"], rb["doc_bits"])]
                diff = ratio(bits, [len(x) for x in _bpc_documents(d)][:len(bits)])   # limit 时只评了前几篇
                rows.append(f"| bpc 差：{DOMAIN_NAMES[d]}（右 − 左，逐篇配对） | | {_num(diff)} |")
    tasks = [t for t in items.CHOICE_TASKS if all(t in (r.get("knowledge") or {}) for r in reports.values())]
    for t in tasks:
        for half in items.HALVES:
            row(f"{TASK_NAMES[t]}：{'见过' if half == 'seen' else '没见过'}（norm）",
                lambda r, t=t, h=half: _pct(r["knowledge"][t][h]["acc_norm"]))
        row("　差：见过 − 没见过", lambda r, t=t: _gap(difference(r["knowledge"][t]["seen"]["acc_norm"],
                                                                 r["knowledge"][t]["unseen"]["acc_norm"])))
    return "\n".join(rows)


def write_report(result: dict, out_dir, name: str | None = None) -> tuple[Path, Path]:
    """把 JSON 和 Markdown 成绩单原子写到 out_dir/report_<name>.json / .md。"""
    from .files import as_path, atomic_write_text
    out = as_path(out_dir, "--out")
    name = name or Path(result["model"]["name"]).name
    def clean(x):   # NaN 不是合法的 JSON：写成 null
        if isinstance(x, float) and x != x:
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return [clean(v) for v in x] if isinstance(x, (list, tuple)) else x
    js = atomic_write_text(out / f"report_{name}.json", json.dumps(clean(result), ensure_ascii=False, indent=1) + "\n")
    md = atomic_write_text(out / f"report_{name}.md", report_card_markdown(result))
    return js, md


if __name__ == "__main__":  # python -m course_lib.eval：实现在 course_lib/cli/eval.py
    from course_lib.cli.eval import main
    raise SystemExit(main())
