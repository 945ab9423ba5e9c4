"""course_lib.align：偏好数据、DPO（与 TRL 逐批核对）、GRPO。"""
import copy
import json
import math

import pytest
import torch

from course_lib.align import (PreferenceDataset, arithmetic_reward, completion_logps, dpo_loss, dpo_stats,
                              encode_completion, group_advantages, grpo_loss, kl_to_reference, load_preference_jsonl,
                              on_policy_pairs, preference_eval, train_dpo, train_grpo)
from course_lib.chat_format import CHAT_TEMPLATE
from course_lib.hf import export_hf
from course_lib.llama import Llama, LlamaConfig
from course_lib.reference import reference_dir
from course_lib.sft import IGNORE, SFTDataset
from course_lib.sft_data import arithmetic_example, arithmetic_problems
from course_lib.tokenizer import BPETokenizer

CFG = dict(max_len=96, batch_size=4, max_steps=4, lr=1e-3, min_lr_ratio=0.1, warmup_steps=0, weight_decay=0.0,
           grad_clip=1.0, eval_interval=0, seed=0, beta=0.1, group_size=4, temperature=1.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.load(reference_dir())


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=tok.vocab_size, max_seq_len=128, dim=32, n_layers=2, n_heads=4,
                             n_kv_heads=2)).eval()


def pairs():
    return [{"task": "arithmetic", "messages": [{"role": "user", "content": f"计算：{a}+{b}=？"}],
             "chosen": f"{a}+{b}={a + b}", "rejected": f"{a}+{b}={a + b + 7}"} for a, b in ((12, 30), (45, 21),
                                                                                        (33, 17), (60, 24))]


def test_encode_completion_labels_only_the_last_reply(tok):
    prompt = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
              {"role": "user", "content": "计算：1+2=？"}]
    enc = encode_completion(prompt, "1+2=3", tok)
    labelled = [t for t, y in zip(enc["input_ids"], enc["labels"]) if y != IGNORE]
    assert labelled == tok.encode("1+2=3") + [tok.im_end_id]


def test_dpo_loss_formula_and_stats():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-3.0, -2.0], [-4.0, -1.0], [-3.5, -2.0], [-3.0, -1.5]))
    beta = 0.5
    want = -sum(math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d))))) for a, b, c, d in zip(pc, pr, rc, rr)) / 2
    assert dpo_loss(pc, pr, rc, rr, beta).item() == pytest.approx(want, rel=1e-6)
    s = dpo_stats(pc, pr, rc, rr, beta)
    assert s["accuracy"] == 0.5 and s["margin"] == pytest.approx(beta * ((0.5 - -1.0) + (0.0 - 0.5)) / 2)
    assert dpo_loss(pc, pr, pc, pr).item() == pytest.approx(math.log(2))   # 策略 = 参考：log 2


def test_dpo_matches_trl_on_the_same_batch(tok, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = tiny(tok)
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sp = reference_dir() / BPETokenizer.MODEL_FILE
    dirs = {name: export_hf(m, tmp_path / name, sp_model_path=sp, chat_template=CHAT_TEMPLATE)
            for name, m in (("policy", policy), ("ref", ref))}
    hf_tok = AutoTokenizer.from_pretrained(dirs["policy"])
    rows = [{"prompt": p["messages"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs()]
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_length=96, beta=0.1,
                         use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no")
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(dirs["policy"], dtype=torch.float32),
                             ref_model=AutoModelForCausalLM.from_pretrained(dirs["ref"], dtype=torch.float32),
                             args=args, train_dataset=Dataset.from_list(rows), processing_class=hf_tok)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    assert torch.equal(mask, mask.cummin(dim=1).values), "TRL 的批次应该在右边补齐（因果模型不需要注意力掩码）"
    x, y = ids[:, :-1], torch.where(comp[:, 1:].bool(), ids[:, 1:], torch.full_like(ids[:, 1:], IGNORE))
    with torch.no_grad():
        pc, pr = completion_logps(policy(x)[0], y).chunk(2)
        rc, rr = completion_logps(ref(x)[0], y).chunk(2)
    ours = dpo_loss(pc, pr, rc, rr, 0.1).item()
    assert abs(ours - trl_loss) <= 1e-5, (ours, trl_loss)
    assert abs(ours - math.log(2)) > 1e-3, "策略与参考不同，损失不该正好是 log 2（否则这个比较什么也没测）"
    # 我们自己的编码与 TRL 的回复部分相同（TRL 会在 <|im_end|> 之后再补一个换行和 eos 之类的结尾，只比较共同的前缀）
    ours_rows = [[t for t, yy in zip(e[k]["input_ids"], e[k]["labels"]) if yy != IGNORE]
                 for e in PreferenceDataset(pairs(), tok, 96).items for k in ("chosen", "rejected")]
    for row, m in zip(ids.tolist(), comp.tolist()):        # TRL 打乱了顺序：每一行都应该以我们的某一条回复开头
        trl_c = [t for t, keep in zip(row, m) if keep]
        assert any(trl_c[:len(o)] == o for o in ours_rows), trl_c


def test_train_dpo_learns_the_preference_and_keeps_reference_fixed(tok):
    model = tiny(tok)
    ref = copy.deepcopy(model)
    data = PreferenceDataset(pairs(), tok, 96)
    history, log = train_dpo(model, tok, data, data, dict(CFG, max_steps=30, lr=3e-3, eval_interval=30),
                             progress=False)
    assert len(log["margin"]) == 30 and len(history.step_loss) == 30
    assert history.step_loss[0] == pytest.approx(math.log(2), abs=1e-5)   # 第一步：策略 = 参考
    after = preference_eval(model, data, 0.1)
    assert after["accuracy"] == 1.0 and after["margin"] > 0.5 and after["loss"] < 0.5
    ref_again = data.set_reference(ref)                                      # 参考模型的 log 概率没有变
    assert torch.allclose(ref_again, torch.stack([e["ref"] for e in data.items]))


def test_load_preference_jsonl_both_formats_and_errors(tmp_path):
    path = tmp_path / "pref.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prompt": "计算：1+2=？", "chosen": "1+2=3", "rejected": "1+2=4"},
        {"prompt": [{"role": "user", "content": "你好"}], "chosen": [{"role": "assistant", "content": "你好！"}],
         "rejected": [{"role": "assistant", "content": "负面"}]}]), encoding="utf-8")
    got = load_preference_jsonl(path)
    assert [p["chosen"] for p in got] == ["1+2=3", "你好！"] and got[1]["messages"][-1]["role"] == "user"
    fixture = load_preference_jsonl("tests/fixtures/preference_sample.jsonl")
    assert len(fixture) >= 3 and PreferenceDataset(fixture, BPETokenizer.load(reference_dir())).stats["n_kept"] >= 3
    for bad, msg in (('{"prompt": "a", "chosen": "b"}', "prompt、chosen、rejected"), ("{oops", "不是合法的 JSON"),
                     ('{"prompt": "a", "chosen": "b", "rejected": "b"}', "完全相同")):
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ValueError, match=msg):
            load_preference_jsonl(path)


def test_on_policy_pairs_use_the_models_own_wrong_answers(tok):
    examples = [arithmetic_example(*p) for p in arithmetic_problems("train")[:3]]
    got, stats = on_policy_pairs(tiny(tok), tok, examples, n_samples=2, max_new_tokens=6, seed=0)
    assert stats["arithmetic"]["prompts"] == 3 and stats["arithmetic"]["verified"] == 0   # 随机模型一道也不会
    assert len(got) == 3 and all(p["chosen"] == ex["messages"][-1]["content"] and p["rejected"] != p["chosen"]
                                 for p, ex in zip(got, examples))


def test_arithmetic_reward_and_group_advantages():
    ex = arithmetic_example(12, "+", 30)
    assert arithmetic_reward(ex, "12+30=42", True) == 1.0
    assert arithmetic_reward(ex, "12+30=41", True) == 0.1
    assert arithmetic_reward(ex, "12+30=42", False) == 0.0   # 没停下
    assert arithmetic_reward(ex, "42", True) == 0.0          # 没有复述题目
    assert arithmetic_reward(ex, "11+30=42", True) == 0.0    # 复述错了
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1]]))
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3) and torch.all(adv[1] == 0)


def test_grpo_without_reward_signal_does_not_move_the_model(tok):
    model = tiny(tok)
    before = [p.clone() for p in model.parameters()]
    x = torch.tensor([[1, 5, 7, 9]] * 2)
    y = torch.tensor([[IGNORE, 7, 9, 3]] * 2)
    with torch.no_grad():
        ref_lp = torch.log_softmax(model(x)[0], -1).gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y != IGNORE)
    loss = grpo_loss(model, (x, y, torch.zeros(2), ref_lp), beta=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_grpo_runs_through_the_trainer(tok):
    model = tiny(tok)
    ref = copy.deepcopy(model)
    examples = [arithmetic_example(*p) for p in arithmetic_problems("train")[:4]]
    history, log = train_grpo(model, tok, examples, dict(CFG, max_steps=2, batch_size=8), progress=False)
    assert len(history.step_loss) == 2 and len(log["reward"]) == 2 and all(math.isfinite(v) for v in history.step_loss)
    data = SFTDataset(examples, tok, 128)
    assert kl_to_reference(ref, ref, data) == pytest.approx(0.0, abs=1e-6)
    assert kl_to_reference(model, ref, data) >= 0.0
