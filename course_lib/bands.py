"""每章 notebook 断言的结果范围（band）：训练、微调、量化之后「应该达到多好」，都是实测出来的数字。

产生结果的设置（超参数）在 course_lib/profiles.py 的 CHAPTERS 里；这里只放断言用的界限，和定出它们的那次实测：

- BANDS[章][profile]：notebook 里 `bands = chapter_bands("03_gpt")` 读到的就是这一档的字典；
  值为 None 表示这一档还没有实测，notebook 跳过这条断言（只保留不依赖实测的检查）。
- MEASURED[章]：run 说明是哪次运行（哪一档、什么机器、多少步），其余每个键写「实测值 → 界限（余量）」。

改了 CHAPTERS 里的设置，就要重新实测、同时更新这里的数字和记录。
"""
from __future__ import annotations

from .profiles import active_profile

BANDS: dict[str, dict[str, dict]] = {
    "01_bigram": {
        "tiny": dict(best_alpha_range=(0.003, 0.1), learned_gap_max=0.25),
        "small": dict(best_alpha_range=(0.003, 0.1), learned_gap_max=0.25),
        "full": dict(best_alpha_range=(0.003, 0.1), learned_gap_max=0.25),
    },
    "02_self_attention": {
        "tiny": dict(val_loss_max=4.85),
        "small": dict(val_loss_max=None),
        "full": dict(val_loss_max=None),
    },
    "03_gpt": {
        "tiny": dict(bigram_margin=0.09, overfit_gap_max=0.2),
        "small": dict(bigram_margin=None, overfit_gap_max=0.2),
        "full": dict(bigram_margin=None, overfit_gap_max=0.2),
    },
    "04_llama2": {
        "tiny": dict(llama_gain_min=0.15, kv_speedup_min=2.0),
        "small": dict(llama_gain_min=None, kv_speedup_min=None),
        "full": dict(llama_gain_min=None, kv_speedup_min=None),
    },
    "05_pretraining": {
        "tiny": dict(min_chars_per_token=1.2, min_llama_ratio=1.5, unigram_margin=0.4, reference_margin=0.6,
                     cpt_margin=1.5),
        "small": dict(min_chars_per_token=1.0, min_llama_ratio=1.5, unigram_margin=None, reference_margin=None,
                      cpt_margin=None),
        "full": dict(min_chars_per_token=1.0, min_llama_ratio=1.5, unigram_margin=None, reference_margin=None,
                     cpt_margin=None),
    },
    "06_sft": {
        "tiny": dict(base_format_max=0.1, format_ok_min=0.9, sentiment_format_min=0.95, sentiment_acc_min=0.58,
                     seen_gap_lo_min=0.0),
        "small": dict(base_format_max=0.1, format_ok_min=0.9, sentiment_format_min=0.95, sentiment_acc_min=0.58,
                      seen_gap_lo_min=0.0),
        "full": dict(base_format_max=0.1, format_ok_min=0.9, sentiment_format_min=0.95, sentiment_acc_min=0.58,
                     seen_gap_lo_min=0.0),
    },
    "07_lora": {
        "tiny": dict(acc_drop_max=0.04, val_max_rise=0.003, full_gap_max=0.05, peft_tol=1e-4, embed_loss_gap_min=0.5,
                     embed_min_se=3.0),
        "small": dict(acc_drop_max=None, val_max_rise=None, full_gap_max=None, peft_tol=None, embed_loss_gap_min=None,
                      embed_min_se=None),
        "full": dict(acc_drop_max=None, val_max_rise=None, full_gap_max=None, peft_tol=None, embed_loss_gap_min=None,
                     embed_min_se=None),
    },
    "08_quantization": {
        "tiny": dict(bpc_ratio_8bit=1.003, bpc_ratio_4bit=1.02, acc_drop_8bit=0.07, acc_drop_4bit=0.12,
                     qlora_min_drop=2.0, qlora_lora_gap_max=0.1),
        "small": dict(bpc_ratio_8bit=1.005, bpc_ratio_4bit=1.03, acc_drop_8bit=0.05, acc_drop_4bit=0.1,
                      qlora_min_drop=1.0, qlora_lora_gap_max=0.1),
        "full": dict(bpc_ratio_8bit=1.005, bpc_ratio_4bit=1.03, acc_drop_8bit=0.05, acc_drop_4bit=0.1,
                     qlora_min_drop=1.0, qlora_lora_gap_max=0.1),
    },
    "09_chat": {
        "tiny": dict(cache_speedup_min=2.0, distinct_gain_min=0.3, stop_rate_min=0.8, ref_skill_gain_min=0.2),
        "small": dict(cache_speedup_min=1.0, distinct_gain_min=0.3, stop_rate_min=0.8, ref_skill_gain_min=None),
        "full": dict(cache_speedup_min=1.0, distinct_gain_min=0.3, stop_rate_min=0.8, ref_skill_gain_min=None),
    },
    "10_alignment": {
        "tiny": dict(refusal_gain_min=0.15, skill_drop_max=0.1, bpc_ratio_max=1.05, kl_max=0.1, overopt_kl_ratio_min=5.0,
                     overopt_arith_drop_min=0.2, heldout_pref_lo_min=0.6, grpo_gain_min=0.1, grpo_kl_max=0.5,
                     grpo_refusal_min=0.9),
        "small": dict(refusal_gain_min=None, skill_drop_max=None, bpc_ratio_max=None, kl_max=None,
                      overopt_kl_ratio_min=None, overopt_arith_drop_min=None, heldout_pref_lo_min=None,
                      grpo_gain_min=None, grpo_kl_max=None, grpo_refusal_min=None),
        "full": dict(refusal_gain_min=None, skill_drop_max=None, bpc_ratio_max=None, kl_max=None,
                     overopt_kl_ratio_min=None, overopt_arith_drop_min=None, heldout_pref_lo_min=None,
                     grpo_gain_min=None, grpo_kl_max=None, grpo_refusal_min=None),
    },
    "11_deploy": {
        "tiny": dict(q8_0_dbpc_max=0.01, q4_0_dbpc_min=0.01, q8_0_top1_min=0.95),
        "small": dict(q8_0_dbpc_max=0.01, q4_0_dbpc_min=0.01, q8_0_top1_min=0.95),
        "full": dict(q8_0_dbpc_max=0.01, q4_0_dbpc_min=0.01, q8_0_top1_min=0.95),
    },
}

# 定出每条界限的实测。「余量」留给不同的机器、线程数、PyTorch 版本和机器负载。
MEASURED: dict[str, dict[str, str]] = {
    "01_bigram": {
        "run": "tiny，2 核 CPU：计数模型扫 α；BigramLM 训练 50 步。small 的 300 步也在 CPU 上跑过一次。",
        "best_alpha_range": "验证集上最好的 α：tiny 0.03 → 要求在 [0.003, 0.1] 内（各差 10 倍以内）",
        "learned_gap_max": "学到的模型比最好的计数模型差：tiny 4.837 − 4.679 = 0.158，small 4.785 − 4.736 = 0.05 → 上限 0.25",
    },
    "02_self_attention": {
        "run": "tiny，2 核 CPU：1 层 GPT 训练 1500 步。",
        "val_loss_max": "验证损失 4.752 → 上限 4.85（余量 0.1）；small、full 尚无实测",
    },
    "03_gpt": {
        "run": "tiny，空闲的 2 核 CPU：4 层 GPT，1600 步 × 16×64 个字（约 123 秒）。",
        "bigram_margin": "整个验证集 4.540，最好的二元模型 4.679：低 0.139 nats → 要求至少低 0.09；small、full 尚无实测",
        "overfit_gap_max": "最后一次评估：验证 4.564 − 训练 4.449 = 0.115 → 上限 0.2",
    },
    "04_llama2": {
        "run": "tiny，2 核 CPU：GPT 与 Llama 同宽、同深、同数据，各 500 步 × 16×64 个字，种子 1337 / 1 / 2；"
               "KV 缓存用参考模型测（128 个 token 的提示，再生成 60 个）。",
        "llama_gain_min": "整个验证集：GPT 5.051 / 5.045 / 5.086，Llama 4.812 / 4.820 / 4.848——每个种子 Llama 都低 0.22–0.24，"
                          "同一模型不同种子只差 0.04 → 要求至少低 0.15；small、full 尚无实测",
        "kv_speedup_min": "端到端贪心生成：整段重算 1.02 秒，KV 缓存 0.20 秒，快 5.0 倍 → 下限 2（机器忙时也够）；"
                          "small、full 尚无实测",
    },
    "05_pretraining": {
        "run": "tiny，2 核 CPU，OMP_NUM_THREADS=1：分词器在 50 万字上训练（词表 4800）；预训练 250 步；"
               "在成语语料上继续预训练 40 步。分词器的两项也在 mix 语料 + 词表 6400（small、full 的设置）上测过。",
        "min_chars_per_token": "BPE 每个 token 1.295 个字（mix + 6400：1.272）→ 下限 1.2；small、full 改用 course 语料"
                               "（古诗文多，生僻字走字节回退）：course + 6400 实测 1.083 → 下限 1.0",
        "min_llama_ratio": "「只认识 700 个汉字」的分词器多用 1.64 倍 token（mix：1.67）→ 下限 1.5（三档都断言）",
        "unigram_margin": "验证损失 6.69，一元模型 7.25：低 0.56 → 要求至少低 0.4；small、full 尚无实测",
        "reference_margin": "同一段新闻验证文本每字损失：本章模型 5.23，参考模型 4.10（assets/base_model，低 1.13；上一版参考模型 4.29）→ 要求至少低 0.6；"
                            "small、full 尚无实测（GPU 档训练得比参考模型还久，不一定更差）",
        "cpt_margin": "成语验证损失 7.91 → 5.73（降 2.18）→ 要求至少降 1.5；small、full 尚无实测",
    },
    "06_sft": {
        "run": "tiny，2 核 CPU：参考基座模型 SFT 200 步 × 16 条对话；测试集全部 254 道题"
               "（另在 150 步、250 步上各测过一次）。",
        "base_format_max": "基座模型的回复以 <|im_end|> 结束的比例 0.00 → 上限 0.1（三档都断言）",
        "format_ok_min": "微调后 0.99（150 步：0.97，250 步：1.00）→ 下限 0.9（三档都断言）",
        "sentiment_format_min": "情感题格式正确 1.00 → 下限 0.95（三档都断言）",
        "sentiment_acc_min": "情感准确率 0.65（100 题；150 步：0.67，250 步：0.75）→ 下限 0.58，"
                             "明显高于随机猜测的 0.5（三档都断言）",
        "seen_gap_lo_min": "6.8 节：四个知识任务合计（每一半 400 题）「见过 − 没见过」：基座 +12.5 点 [+5.6, +19.2] → 区间下限 > 0"
                           "（只对基座断言；参考基座在完整题库上四个任务各自都 > 0，见 assets/base_model/report_base.md）。"
                           "SFT 之后 +4.7 [-1.9, +11.3]，区间含 0，不断言；另断言没见过的一半 SFT 之后不明显变好"
                           "（实测 −5.5 [−12.1, +1.1]）",
    },
    "07_lora": {
        "run": "tiny，2 核 CPU：第 06 章 200 步的 SFT 模型（新参考基座 3.59 M）；LoRA r=8、全量微调、秩扫描、从基座出发的两种 LoRA "
               "都是 24 步 × 8 条（train 划分全部 15,632 条评论里取）；验证 200 题，测试 test 划分全部 813 条评论（按对数似然选「正 / 负」，"
               "与贪心生成在 204 题上逐题一致）。另在 40 步上、以及从基座出发换种子 1、2 各测过一次。",
        "acc_drop_max": "测试准确率：SFT 75.2%，LoRA 76.0%（+0.9 个百分点 [-3.3, +5.0]；40 步：74.9%）→ LoRA 最多比 SFT 低 0.04"
                        "（约一个 95 % 区间的半宽）；small、full 尚无实测",
        "val_max_rise": "验证损失：SFT 0.1842，LoRA 0.1824（40 步 0.1799）→ 最多升高 0.003；small、full 尚无实测",
        "full_gap_max": "全量微调（full_lr=1e-4）75.0%，LoRA 76.0%：差 -1.0 个百分点 [-5.2, +3.2]（40 步：-0.7）→ 相差不超过 0.05；"
                        "small、full 尚无实测",
        "peft_tol": "同起点、同数据时 peft 与手写 LoRA 逐步损失之差约 2e-7（float32 舍入）→ 上限 1e-4；"
                    "small、full 有 dropout（两边随机掩码不同），不断言",
        "embed_loss_gap_min": "从基座出发，只有 LoRA 与加 embed_tokens 的 test 回答损失 1.835 对 0.309：配对差 1.526 [1.515, 1.537]"
                              "（种子 1：1.424；24 步 × 16 条、lr 2e-3 的两个种子：1.19）→ 区间下限至少 0.5；"
                              "准确率这时两边都还没学会（45.8% 对 47.8%，区间含 0；40 步 × 16 条时三个种子的差在 +2.6 到 +20 个百分点之间跳），所以不断言准确率",
        "embed_min_se": "上面的配对差是标准误差的 267 倍（种子 1：1152 倍）→ 至少 3 倍（issue 12 的要求）",
    },
    "08_quantization": {
        "run": "tiny，2 核 CPU：参考对话模型 assets/chat_model（3.59 M 参数，SFT 4000 步）；course 语料 val 的前 16 个 256-token "
               "窗口算 bpc 和 KL；course_lib.eval 的 test 技能题：情感 100、算术 30、拼音 16 道；QLoRA 与 LoRA 各 24 步。",
        "bpc_ratio_8bit": "fp32 的 bpc 6.1056；bf16 +0.0013（+0.02%，配对区间不含 0），三种 int8 +0.0001，LLM.int8 −0.0006 "
                          "→ 上限 ×1.003（约 14 倍余量）；small、full 尚无实测，事先定为 ×1.005",
        "bpc_ratio_4bit": "int4 逐组 +0.0303（+0.50%），NF4 +0.0352（+0.58%），NF4 + 双重量化 +0.0349 → 上限 ×1.02；"
                          "small、full 尚无实测，事先定为 ×1.03",
        "acc_drop_8bit": "bf16、三种 int8、LLM.int8 在三项任务上答对的题与 fp32 一题不差（情感 85.0%、算术 96.7%、拼音 89.1%）"
                         "→ 最多降 0.07（容得下算术题翻转 2 道，1 道是 3.3 点）；small、full 尚无实测，事先定为 0.05",
        "acc_drop_4bit": "4 比特最多降 0.02（NF4 情感少对 2 道；int4 情感多对 1 道；算术、拼音不变），都在区间之内 → 最多降 0.12；"
                         "small、full 尚无实测，事先定为 0.1",
        "qlora_min_drop": "QLoRA 24 步后 SFT 验证损失 7.875 → 4.221（降 3.65）→ 要求至少降 2.0；small、full 尚无实测，事先定为 1.0",
        "qlora_lora_gap_max": "同样 24 步：QLoRA 4.221，LoRA 4.231，差 −0.010（逐条配对 −0.009 [−0.038, +0.019]）→ 上限 0.1；"
                              "small、full 尚无实测，事先定为 0.1",
    },
    "09_chat": {
        "run": "tiny，2 核 CPU（别的章节同时在跑，机器很忙）：3.59 M 的参考基座模型 + 第 06 章 200 步的 SFT 模型 + 参考对话模型"
               "（assets/chat_model，4000 步）；生成 120 个 token 测 KV 缓存（有、没有缓存交替 3 遍，各取最快的一遍），"
               "6 条测试集续写测重复惩罚，18 道测试题测「说完就停」，course_lib.eval 的技能题每个任务 20 道比较两个对话模型。",
        "cache_speedup_min": "KV 缓存提速 4.4 倍（负载约 4）、2.3 倍（负载约 6，同时跑着三本 notebook；只测一遍时 1.7 倍，"
                             "所以改成交替测 3 遍取最快）→ 下限 2；small、full 尚无实测：GPU 上小模型每步的开销几乎与长度无关，下限设为 1",
        "distinct_gain_min": "重复惩罚 1.3 让 distinct-4 从 0.361 升到 0.932（+0.57；上一版基座 +0.58）→ 下限 +0.3（三档都断言）",
        "stop_rate_min": "SFT 模型 100% 的回复以 <|im_end|> 结束（基座模型 0%）→ 下限 0.8（三档都断言）",
        "ref_skill_gain_min": "五个技能任务（算术、情感、拼音、诗句接续、身份）正确率的简单平均：参考对话模型 73%，90 秒模型 35%，"
                              "+0.38（两次运行相同：贪心、模型固定）→ 下限 +0.2（余量留给别的机器上贪心偶尔选出的不同 token；"
                              "每个任务 20 道题，一道题是 5 个百分点）。small、full 的 SFT 模型训练得更久，差距会不同，尚无实测，不断言",
    },
    "10_alignment": {
        "run": "tiny，2 核 CPU：参考对话模型 assets/chat_model；在线偏好对 233 对（拒绝 210、算术 23），DPO 40 步 × 8 对、"
               "lr 5e-5、β 0.1；拒绝题 test 64 道（8 个没见过的动作 × 8 种问法），course_lib.eval 技能题各 100 道（GRPO 前后的情感、拼音各 50 道），算术 test 300 道；"
               "GRPO 从 lr 2e-4 的（过度优化的）DPO 模型出发，12 步 × 64 条（8 题 × 8 条）、lr 5e-5、β 0.04。"
               "DPO 也在另一次（有别的任务同时占 CPU）运行里测过：拒绝 59% → 100%，算术 300 道 97.7% → 95.3%。",
        "refusal_gain_min": "拒绝率 59.4% [47.1, 70.5] → 100.0% [94.3, 100.0]，差 +40.6 个百分点 [+28.1, +52.9] → 区间下限至少 +0.15",
        "skill_drop_max": "算术 96.0% → 98.0%，情感 85.0% → 82.0%，拼音 83.0% → 81.8%（各 100 道）：最多降 0.03 → 上限 0.1"
                          "（100 道题的标准误差约 0.04）",
        "bpc_ratio_max": "新闻 6.466 → 6.508、古诗文 6.545 → 6.559、评论 6.841 → 6.859：最多 ×1.006 → 上限 ×1.05",
        "kl_max": "DPO 之后每个回复 token 的 KL(π‖π_ref) 0.0128 → 上限 0.1",
        "overopt_kl_ratio_min": "学习率 2e-4 时 KL 0.592，是 5e-5 时的 46 倍 → 至少 5 倍",
        "overopt_arith_drop_min": "学习率 2e-4 时算术（300 道，贪心）97.7% → 43.7%，降 0.540 [0.479, 0.596]（500 道时 "
                                  "97.8% → 43.2%；600 道时 98.0% → 41.7%）→ 区间下限至少 0.2",
        "heldout_pref_lo_min": "没见过的偏好对 76 对（拒绝 54、算术 22）：DPO 之后偏好准确率 86.8% [77.4, 92.7] → 区间下限至少 0.6"
                               "（瞎猜是 0.5）",
        "grpo_gain_min": "从过度优化的模型出发，test 算术 300 道：贪心 43.7% → 75.3%，+31.7 个百分点 [+24.0, +38.8]；温度 1 采样 "
                         "38.3% → 66.7%，+28.3 [+20.5, +35.7]（500 道时 +33.6 [+27.7, +39.1] / +31.4 [+25.4, +37.1]；"
                         "16 步、lr 2e-5、600 道时：+28.5 [+23.0, +33.7] / +25.0 [+19.4, +30.3]）"
                         "→ 两个区间的下限都至少 +0.1。从健康的参考对话模型出发时（起点温度 1 采样 91.8%）几种设置都量不出提升，"
                         "见练习 5",
        "grpo_kl_max": "GRPO 之后到出发点的 KL 0.134（16 步、lr 2e-5 时 0.049）→ 上限 0.5",
        "grpo_refusal_min": "只练算术，拒绝率 100% → 100%（64 道）→ 至少 0.9；没练过的情感 82% → 84%、拼音 57.8% → 72.8%"
                            "（各 50 道），用 skill_drop_max 的 0.1 作下降的上限",
    },
    "11_deploy": {
        "run": "tiny，2 核 CPU：参考对话模型 assets/chat_model 导出的 GGUF（gguf 0.19.0），量化代价在 course_lib.eval 的 bpc 文档上"
               "逐篇配对：每个领域 60 篇（约 2 万字；100 篇时结论相同），KL 和 top-1 在每个领域前 20 篇的 6,058 个位置上。"
               "三档用的是同一个发布的模型，所以范围相同。",
        "q8_0_dbpc_max": "q8_0 的 Δbpc 区间上限：新闻 +0.0017、古诗文 +0.0014、评论 +0.0014（100 篇时最大 +0.0013）→ 上限 0.01",
        "q4_0_dbpc_min": "q4_0 的 Δbpc 区间下限：新闻 +0.032、古诗文 +0.041、评论 +0.028（100 篇时最小 +0.031）→ 至少 0.01",
        "q8_0_top1_min": "q8_0 与 f32 的 top-1 相同 98.9%（bench_gguf：transformers 98.9%，llama.cpp 98.2%）→ 至少 0.95",
    },
}


def chapter_bands(chapter: str, profile: str | None = None) -> dict:
    """某一章在当前 profile 下断言的结果范围（一个新的 dict）。None 表示这一档尚无实测，不断言。"""
    if chapter not in BANDS:
        raise KeyError(f"第 {chapter!r} 章没有断言的结果范围；有范围的章：{', '.join(BANDS)}。")
    return dict(BANDS[chapter][active_profile(profile)])

