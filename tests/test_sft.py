"""course_lib.sft：指令数据、损失掩码、截断与跳过、补齐、训练循环、评测打分、公开数据格式的读取。"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib import sft, sft_data
from course_lib.chat_format import check_trainable
from course_lib.chat_format import DEFAULT_SYSTEM, IM_END, encode_chat
from course_lib.data import load_idioms, load_reviews
from course_lib.llama import Llama, LlamaConfig
from course_lib.sft import IGNORE, SFTDataset, encode_sft_example, train_sft
from course_lib.sft_data import build_sft_examples, load_alpaca, load_dialogues, load_sharegpt
from course_lib.sft_eval import char_f1, evaluate_sft, generate_reply, score_reply

FIX = Path(__file__).parent / "fixtures"
CONV = [{"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！我是小雁。"},
        {"role": "user", "content": "计算：23+45=？"},
        {"role": "assistant", "content": "23+45=68"}]


@pytest.fixture(scope="module")
def tok(small_bpe):
    return small_bpe([json.dumps(d["messages"], ensure_ascii=False) for d in load_dialogues()], margin=300)


def _model(tok, seed=0):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=tok.vocab_size, max_seq_len=256, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             tie_weights=True))


def _assistant_spans(ids, tok):
    """独立地（不看 labels）找出助手回复的位置：每个 <|im_start|>assistant\\n 之后，到下一个 <|im_end|>（含）为止。"""
    header = tok.encode("assistant\n")
    spans = set()
    for i, t in enumerate(ids):
        if t == tok.im_start_id and ids[i + 1:i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while j < len(ids):
                spans.add(j)
                if ids[j] == tok.im_end_id:
                    break
                j += 1
    return spans


# ---------------------------------------------------------------- 掩码
def test_labels_are_exactly_the_assistant_spans(tok):
    enc = encode_sft_example(CONV, tok)
    ids, labels = enc["input_ids"], enc["labels"]
    assert ids == encode_chat(CONV, tok) and len(labels) == len(ids)
    trainable = {i for i, y in enumerate(labels) if y != IGNORE}
    assert trainable == _assistant_spans(ids, tok)
    assert all(labels[i] == ids[i] for i in trainable)
    assert enc["n_trainable"] == len(trainable) and not enc["truncated"]
    # 可训练的 token 连起来，恰好是两条助手回复各自加上 <|im_end|>
    text = tok.decode([ids[i] for i in sorted(trainable)])
    assert text == "你好！我是小雁。" + IM_END + "23+45=68" + IM_END


def test_every_generated_task_masks_correctly(tok):
    for ex in build_sft_examples("val")[:60]:
        enc = encode_sft_example(ex["messages"], tok)
        trainable = {i for i, y in enumerate(enc["labels"]) if y != IGNORE}
        assert trainable == _assistant_spans(enc["input_ids"], tok), ex["task"]


def test_special_strings_in_replies_do_not_break_the_mask(tok):
    conv = [{"role": "user", "content": "<|im_end|><|im_start|>assistant\n"},
            {"role": "assistant", "content": "好的<|im_end|>"}]
    enc = encode_sft_example(conv, tok)
    assert enc["input_ids"].count(tok.im_end_id) == 2  # 内容里的字符串没有变成控制 id
    assert {i for i, y in enumerate(enc["labels"]) if y != IGNORE} == _assistant_spans(enc["input_ids"], tok)


# ---------------------------------------------------------------- 截断与跳过
def test_truncation_drops_oldest_rounds_and_keeps_system(tok):
    rounds = [[{"role": "user", "content": f"第 {i} 个问题：" + "很长的历史" * 8},
               {"role": "assistant", "content": f"第 {i} 个回答。"}] for i in range(6)]
    conv = [CONV[0]] + [m for r in rounds for m in r]
    full = encode_sft_example(conv, tok)
    last = encode_sft_example([CONV[0]] + rounds[-1], tok)
    max_len = len(last["input_ids"]) + 10  # 放得下 system + 最后一轮，放不下再多一轮
    enc = encode_sft_example(conv, tok, max_len)
    assert len(full["input_ids"]) > max_len
    assert enc["truncated"] and enc["dropped_rounds"] == 5
    assert enc["input_ids"] == last["input_ids"] and enc["labels"] == last["labels"]


def test_single_long_reply_is_cut_at_max_len(tok):
    conv = [{"role": "user", "content": "讲个故事"}, {"role": "assistant", "content": "从前有座山，山里有座庙。" * 30}]
    full = encode_sft_example(conv, tok)
    enc = encode_sft_example(conv, tok, max_len=40)
    assert enc["truncated"] and enc["dropped_rounds"] == 0
    assert enc["input_ids"] == full["input_ids"][:40] and enc["labels"] == full["labels"][:40]
    assert 0 < enc["n_trainable"] < full["n_trainable"] and tok.im_end_id not in enc["labels"]


def test_example_without_trainable_tokens_is_skipped_and_counted(tok):
    long_prompt = [{"role": "user", "content": "这是一段非常长的提示。" * 40}, {"role": "assistant", "content": "好"}]
    enc = encode_sft_example(long_prompt, tok, max_len=64)
    assert enc["n_trainable"] == 0
    ds = SFTDataset([{"task": "x", "messages": long_prompt}, {"task": "y", "messages": CONV}], tok, max_len=64)
    assert ds.stats["n_input"] == 2 and ds.stats["n_kept"] == 1 and ds.stats["n_skipped"] == 1
    assert len(ds) == 1 and ds.skipped[0]["task"] == "x" and ds[0]["task"] == "y"
    with pytest.raises(ValueError, match="没有一条剩下可训练的 token"):
        SFTDataset([long_prompt], tok, max_len=64)


@pytest.mark.parametrize("messages,needle", [
    ([{"role": "user", "content": "你好"}], "缺少助手的回复"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
      {"role": "user", "content": "c"}], "缺少助手的回复"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
     "缺了一轮助手回复"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "角色顺序不对"),
])
def test_bad_training_conversations(tok, messages, needle):
    with pytest.raises(ValueError, match=needle):
        encode_sft_example(messages, tok)
    with pytest.raises(ValueError, match=needle):
        SFTDataset([messages], tok)


# ---------------------------------------------------------------- 补齐与损失
def test_collate_pads_with_pad_id_and_ignores_labels(tok):
    ds = SFTDataset([CONV, CONV[1:3]], tok)
    x, y = ds.collate([ds[0], ds[1]])
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert x.shape == y.shape == (2, max(n0, n1) - 1)
    short = 1 if n1 < n0 else 0
    n = min(n0, n1)
    assert (x[short, n:] == tok.pad_id).all() and (y[short, n - 1:] == IGNORE).all()
    assert x[0].tolist()[:n0 - 1] == ds[0]["input_ids"][:-1] and y[0].tolist()[:n0 - 1] == ds[0]["labels"][1:]


def test_masked_loss_matches_hand_computation_and_ignores_padding(tok):
    model = _model(tok).eval()
    ds = SFTDataset([CONV, CONV[1:3]], tok)
    x, y = ds.collate([ds[0], ds[1]])
    logits, loss = model(x, y)
    mask = y != IGNORE
    by_hand = F.cross_entropy(logits[mask], y[mask])
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert torch.allclose(sft.masked_loss(logits, y, per_example=False), by_hand, atol=1e-6)
    rows = [F.cross_entropy(logits[i][mask[i]], y[i][mask[i]]) for i in range(2)]
    assert torch.allclose(sft.masked_loss(logits, y, per_example=True), (rows[0] + rows[1]) / 2, atol=1e-6)
    assert abs(sft.sft_loss(model, ds, per_example=False) - by_hand.item()) < 1e-5
    assert abs(sft.sft_loss(model, ds, batch_size=1) - (rows[0] + rows[1]).item() / 2) < 1e-5
    # 右边补齐不影响前面的位置：单独算第二条的 logits，与批里的相同
    short = 1 if len(ds[1]["input_ids"]) < len(ds[0]["input_ids"]) else 0
    xs, _ = ds.collate([ds[short]])
    alone, _ = model(xs)
    assert torch.allclose(alone[0], logits[short, :xs.shape[1]], atol=1e-5)


def test_length_grouped_batches_cover_every_example_once():
    lengths = [5, 50, 7, 48, 6, 49, 8, 47]
    batches = sft.length_grouped_batches(lengths, 2, torch.Generator().manual_seed(0), group=4)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) == 1


def test_train_sft_lowers_masked_loss(tok):
    model = _model(tok)
    examples = build_sft_examples("val")[:16]
    ds = SFTDataset(examples, tok, max_len=128)
    before = sft.sft_loss(model, ds)
    cfg = dict(max_len=128, batch_size=8, max_steps=30, lr=3e-3, min_lr_ratio=0.1, warmup_steps=3, weight_decay=0.0,
               grad_clip=1.0, eval_interval=10, seed=0, per_example_loss=True, unrelated_key=1)
    history = train_sft(model, tok, ds, ds, cfg, progress=False)
    after = sft.sft_loss(model, ds)
    assert after < before - 1.0
    assert history.eval_step == [0, 10, 20, 30] and abs(history.val_loss[-1] - after) < 1e-6
    assert len(history.step_loss) == 30 and not model.training
    with pytest.raises(ValueError, match="缺少这些配置"):
        train_sft(model, tok, ds, config={"max_len": 64})


SFT_CFG = dict(max_len=96, batch_size=4, max_steps=20, lr=3e-3, min_lr_ratio=0.1, warmup_steps=3, weight_decay=0.0,
               grad_clip=1.0, eval_interval=0, seed=7, per_example_loss=True)


def _plain_sft_loop(model, ds, p):
    """第 06 章最初那个手写的 SFT 循环（Trainer 统一之前的 train_sft），留在这里当「行为不变」的规格。"""
    from course_lib.train import TrainConfig, lr_at, make_optimizer
    cfg = TrainConfig(max_steps=p["max_steps"], batch_size=p["batch_size"], block_size=p["max_len"], lr=p["lr"],
                      min_lr_ratio=p["min_lr_ratio"], warmup_steps=p["warmup_steps"], weight_decay=p["weight_decay"],
                      grad_clip=p["grad_clip"], eval_interval=0, seed=p["seed"])
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    gen, queue, losses = torch.Generator().manual_seed(cfg.seed), [], []
    lengths = [len(e["input_ids"]) for e in ds.items]
    model.train()
    for step in range(cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        if not queue:
            queue = sft.length_grouped_batches(lengths, cfg.batch_size, gen)
        x, y = ds.collate([ds[i] for i in queue.pop()])
        loss = sft.masked_loss(model(x)[0], y, p["per_example_loss"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_train_sft_is_the_plain_loop_bit_for_bit(tok):
    """train_sft 现在是 Trainer 的一种配置：前 20 步的损失和最终权重与手写循环逐位相同（CPU，同一台机器）。"""
    ds = SFTDataset(build_sft_examples("val")[:24], tok, max_len=SFT_CFG["max_len"])
    ours, theirs = _model(tok, seed=3), _model(tok, seed=3)
    history = train_sft(ours, tok, ds, None, SFT_CFG, progress=False)
    assert history.step_loss == _plain_sft_loop(theirs, ds, SFT_CFG)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name


def test_sft_resume_equals_uninterrupted(tok, tmp_path):
    """SFT 训到一半存检查点、新建 Trainer 续训，与一口气训完逐位相同（批次队列和随机数都在检查点里）。"""
    ds = SFTDataset(build_sft_examples("val")[:24], tok, max_len=SFT_CFG["max_len"])
    straight = _model(tok, seed=5)
    full = train_sft(straight, tok, ds, ds, {**SFT_CFG, "eval_interval": 5}, progress=False)
    first = sft.sft_trainer(_model(tok, seed=5), tok, ds, ds, {**SFT_CFG, "eval_interval": 5}, progress=False,
                            checkpoint_dir=str(tmp_path))
    first.fit(stop_at=7)                                                  # 「中断」在一轮批次的中间
    resumed = _model(tok, seed=11)                                        # 权重从检查点来，初始化无所谓
    second = sft.sft_trainer(resumed, tok, ds, ds, {**SFT_CFG, "eval_interval": 5}, progress=False,
                             checkpoint_dir=str(tmp_path), resume="auto")
    assert second.step == 7
    history = second.fit()
    assert history.step_loss == full.step_loss and history.val_loss == full.val_loss
    assert history.eval_step == full.eval_step == [0, 5, 10, 15, 20]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_fp16_selects_a_grad_scaler_for_sft(tok, monkeypatch):
    """fp16 autocast（例如 Colab 的 T4）必须配 GradScaler：选择它的条件与 Trainer 里真正用它的代码路径都测一遍。"""
    from course_lib import device as device_mod
    from course_lib import train as train_mod
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)   # 一块不支持 bf16 的 GPU
    assert device_mod.autocast_dtype("cuda") == torch.float16 and device_mod.needs_grad_scaler("cuda")
    assert not device_mod.needs_grad_scaler("cpu")
    ds = SFTDataset(build_sft_examples("val")[:8], tok, max_len=SFT_CFG["max_len"])
    assert sft.sft_trainer(_model(tok), tok, ds, None, SFT_CFG, progress=False).scaler is None   # CPU：fp32，不需要
    monkeypatch.setattr(train_mod, "needs_grad_scaler", lambda device: True)       # 让 CPU 走 fp16 的那条路
    trainer = sft.sft_trainer(_model(tok), tok, ds, None, {**SFT_CFG, "max_steps": 3}, progress=False)
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    scaled = []
    real_scale = trainer.scaler.scale
    monkeypatch.setattr(trainer.scaler, "scale", lambda loss: scaled.append(loss.item()) or real_scale(loss))
    history = trainer.fit()
    assert len(scaled) == 3 and all(math.isfinite(v) for v in history.step_loss)
    assert trainer.scaler.get_scale() > 0


# ---------------------------------------------------------------- 数据
@pytest.fixture(scope="module")
def splits():
    return {s: build_sft_examples(s) for s in ("train", "val", "test")}


def test_examples_are_deterministic_and_well_formed(splits):
    assert build_sft_examples("test") == splits["test"]
    for split, examples in splits.items():
        for ex in examples:
            assert ex["task"] in sft_data.TASKS and ex["messages"][-1]["role"] == "assistant"
            check_trainable(ex["messages"])
    tasks = {ex["task"] for ex in splits["train"]}
    assert tasks == set(sft_data.TASKS)


def test_test_split_is_held_out(splits):
    # 生成的题目没有一道在 train 和 test 里都出现（手写对话可以有相同的开场白，比如「你是谁？」）
    prompts = {split: {ex["messages"][-2]["content"] for ex in exs if ex["task"] != "dialogue"}
               for split, exs in splits.items()}
    assert not prompts["test"] & prompts["train"] and not prompts["test"] & prompts["val"]
    test_reviews = {r.text for r in load_reviews("test")}
    test_idioms = {i.word for i in load_idioms("test")}
    for ex in splits["test"]:
        q = ex["messages"][-2]["content"]
        if ex["task"] == "sentiment":
            assert q.split("\n", 1)[1] in test_reviews
        elif ex["task"].startswith("idiom"):
            assert q.split("「")[-1].split("」")[0] in test_idioms or q.split("：")[-1] in test_idioms


def test_answers_are_correct(splits):
    for ex in splits["test"] + splits["train"][:2000]:
        reply = ex["messages"][-1]["content"]
        if ex["task"] == "arithmetic":
            a = ex["messages"][-2]["content"].removeprefix("计算：").removesuffix("=？")
            assert str(eval(a)) == ex["answer"] and reply.endswith("=" + ex["answer"])  # noqa: S307
        if ex["answer"] is not None and ex["task"] != "idiom_source":
            assert score_reply(ex, reply) == 1.0, ex


def test_test_set_sizes_and_balance(splits):
    from collections import Counter
    counts = Counter(ex["task"] for ex in splits["test"])
    assert counts["sentiment"] == 100 and counts["arithmetic"] == 50 and counts["idiom_chain"] == 30
    labels = Counter(ex["answer"] for ex in splits["test"] if ex["task"] == "sentiment")
    assert labels == {"正面": 50, "负面": 50}


def test_hand_written_dialogues():
    dialogues = load_dialogues()
    assert len(dialogues) >= 100 and len({d["id"] for d in dialogues}) == len(dialogues)
    assert sum(sum(m["role"] == "user" for m in d["messages"]) > 1 for d in dialogues) >= 15  # 多轮
    assert any("小雁" in m["content"] for d in dialogues for m in d["messages"] if m["role"] == "assistant")
    text = json.dumps([d["messages"] for d in dialogues], ensure_ascii=False)
    leaked = [i.word for i in load_idioms("test") if i.word in text]
    assert not leaked, f"手写对话里出现了 test 划分的成语：{leaked}"


def test_bad_dialogue_file(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "你好"}]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="第 1 行.*缺少助手的回复"):
        load_dialogues(bad)
    bad.write_text('{"id": "a", "messages": [\n', encoding="utf-8")
    with pytest.raises(ValueError, match="不是合法的 JSON"):
        load_dialogues(bad)


def test_load_alpaca_and_sharegpt_fixtures(tok):
    alpaca = load_alpaca(FIX / "alpaca_sample.json")
    assert len(alpaca) == 3
    assert alpaca[0]["messages"] == [{"role": "user", "content": "判断下面这条评论的情感。\n快递很快，包装也很好。"},
                                     {"role": "assistant", "content": "正面"}]
    assert alpaca[1]["messages"][0]["content"] == "「画龙点睛」是什么意思？"  # 空 input 不加换行
    assert load_alpaca(FIX / "alpaca_sample.json", system="S")[2]["messages"][0] == {"role": "system", "content": "S"}
    chats = load_sharegpt(FIX / "sharegpt_sample.json")
    assert [m["role"] for m in chats[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert chats[1]["messages"][1] == {"role": "assistant", "content": "shǒu zhū dài tù"}
    ds = SFTDataset(alpaca + chats, tok)
    assert ds.stats["n_kept"] == 5


def test_public_format_errors(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"question": "x"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="不是 alpaca 格式"):
        load_alpaca(f)
    f.write_text(json.dumps({"instruction": "x"}), encoding="utf-8")
    with pytest.raises(ValueError, match="最外层应该是一个列表"):
        load_alpaca(f)
    f.write_text(json.dumps([{"conversations": [{"from": "robot", "value": "x"}]}]), encoding="utf-8")
    with pytest.raises(ValueError, match="不认识的角色"):
        load_sharegpt(f)
    f.write_text(json.dumps([{"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}]),
                 encoding="utf-8")
    with pytest.raises(ValueError, match="第 1 条：.*角色顺序不对"):
        load_sharegpt(f)
    f.write_text(json.dumps([{"text": "x"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="conversations"):
        load_sharegpt(f)


# ---------------------------------------------------------------- 评测
def test_score_reply_rules():
    senti = {"task": "sentiment", "answer": "正面", "messages": []}
    assert score_reply(senti, "正面") == 1 and score_reply(senti, "负面") == 0 and score_reply(senti, "正面还是负面") == 0
    arith = {"task": "arithmetic", "answer": "68", "messages": []}
    assert score_reply(arith, "23+45=68") == 1 and score_reply(arith, "23+45=67") == 0 and score_reply(arith, "") == 0
    pinyin = {"task": "idiom_pinyin", "answer": "huà shé tiān zú", "messages": []}
    assert score_reply(pinyin, "huà  shé tiān zú") == 1 and score_reply(pinyin, "hua she tian zu") == 0
    chain = {"task": "idiom_chain", "answer": "意气风发",
             "messages": [{"role": "user", "content": "成语接龙：一心一意"}, {"role": "assistant", "content": ""}]}
    assert score_reply(chain, "意气风发") == 1 and score_reply(chain, "「意气风发」。") == 1
    assert score_reply(chain, "意气风发发") == 0  # 不是成语
    assert score_reply(chain, "一心一意") == 0    # 首字不对
    assert char_f1("比喻做了多余的事", "比喻做了多余的事") == 1.0 and char_f1("", "abc") == 0.0
    assert abs(char_f1("ab", "abcd") - 2 * (1 * 0.5) / 1.5) < 1e-9


def test_evaluate_sft_keys_and_fallback_decoding(tok):
    model = _model(tok).eval()
    examples = build_sft_examples("test", sizes=dict(sentiment=2, idiom_meaning=1, idiom_pinyin=1, idiom_chain=1,
                                                     arithmetic=2, dialogue=1))
    result = evaluate_sft(model, tok, examples, max_new_tokens=6)
    for key in ("format_ok", "sentiment_acc", "idiom_acc", "arith_acc"):
        assert 0.0 <= result[key] <= 1.0
    assert result["n"] == len(examples) == len(result["samples"]) == 8
    assert sum(t["n"] for t in result["tasks"].values()) == 8

    class NoStream(torch.nn.Module):  # 像 Hugging Face 模型那样只有 forward：走不带缓存的贪心循环
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            return self.inner(idx)[0]

    messages = examples[0]["messages"][:-1]
    assert generate_reply(NoStream(model), tok, messages, 6) == generate_reply(model, tok, messages, 6)


# ---------------------------------------------------------------- 保存与读取
def test_load_sft_model_rebuilds_when_missing(tmp_data_dir, monkeypatch):
    from course_lib import profiles, reference
    if not (reference.reference_dir() / "model.safetensors").exists():
        pytest.skip("还没有发布参考基座模型（assets/base_model）")
    monkeypatch.setitem(profiles.CHAPTERS["06_sft"], "tiny", {**profiles.CHAPTERS["06_sft"]["tiny"], "max_steps": 2,
                                                               "eval_interval": 0})
    model, tok = sft.load_sft_model()       # 没有 → 现场训练并保存
    assert (sft.sft_model_dir() / "model.safetensors").exists()
    again, _ = sft.load_sft_model(rebuild=False)  # 有了 → 直接读取
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    path = sft.sft_model_dir() / "config.json"
    good = path.read_text(encoding="utf-8")
    for key, value in (("base_sha256", "0" * 64), ("sft", {"config": {"max_steps": 999}})):
        meta = json.loads(good)
        meta[key] = value                          # 基座模型换过了 / 配置变了 → 不再算数
        path.write_text(json.dumps(meta), encoding="utf-8")
        with pytest.raises(FileNotFoundError, match="没有与当前参考模型和配置对应"):
            sft.load_sft_model(rebuild=False)


def test_concurrent_load_sft_model_trains_once(tmp_data_dir):
    # 两个进程同时发现 SFT 模型缺了（pytest -n 2 并行执行第 06、07 章时就会这样）：加了文件锁，只有一个在训练，
    # 另一个等它写好直接读——不会两个一起写同一个文件夹。训练改成 2 步，只为快
    import subprocess
    import sys
    code = """
import time
import course_lib.profiles as profiles
import course_lib.sft as sft
real = profiles.chapter_config
profiles.chapter_config = lambda ch, profile=None, **o: real(ch, profile, **({"max_steps": 2, **o} if ch == "06_sft" else o))
calls, build = [], sft.build_sft_model
def counted(**kw):
    calls.append(1)
    time.sleep(1.0)                    # 让另一个进程有时间撞上来
    return build(**kw)
sft.build_sft_model = counted
sft.load_sft_model()
print("BUILT", len(calls))
"""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(int(o.rsplit("BUILT", 1)[1]) for o in outs) == [0, 1], outs   # 一个训练了，另一个读它写好的
