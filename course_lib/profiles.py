"""三档配置（profile）：同一本 notebook，在笔记本 CPU、Colab T4、A100/H100 上都能跑。

- tiny ：只有 CPU；每章在 2 核 CPU 上 ≤ 3 分钟。
- small：一块消费级 GPU 或 Colab 的 T4。
- full ：A100 / H100 级别的 GPU。

选择顺序：函数参数 > 环境变量 COURSE_PROFILE > 自动（有 CUDA → small，否则 tiny）。
每章的超参数都写在下面的 CHAPTERS 表里，notebook 只读取，不自己写死数字；notebook 断言的结果范围（实测得出的界限）
不在这里，在 course_lib/bands.py。
"""
from __future__ import annotations

import os

import torch

PROFILES = ("tiny", "small", "full")

# 每章每档的超参数。tiny 档的数字是在 2 核 CPU 上实测、保证每章 ≤ 3 分钟挑出来的。
CHAPTERS: dict[str, dict[str, dict]] = {
    "01_bigram": {
        # BigramLM 是一张 V×V 的表：每一步都要更新 V² 个参数，所以用大批次、少步数、较大的 Adam 学习率。
        # max_vocab 与第 03 章相同（同一个字符级分词器）。demo_steps 是手写训练循环演示的步数。
        "tiny": dict(corpus="news", max_vocab=3000, batch_size=512, block_size=64, max_steps=50, lr=0.15,
                     betas=(0.9, 0.99), min_lr_ratio=0.7, eval_interval=5, eval_iters=1, demo_steps=10),
        "small": dict(corpus="news", max_vocab=None, batch_size=512, block_size=64, max_steps=300, lr=0.1,
                      betas=(0.9, 0.99), min_lr_ratio=0.3, eval_interval=25, eval_iters=5, demo_steps=10),
        "full": dict(corpus="news", max_vocab=None, batch_size=1024, block_size=64, max_steps=300, lr=0.1,
                     betas=(0.9, 0.99), min_lr_ratio=0.3, eval_interval=25, eval_iters=5, demo_steps=10),
    },
    "02_self_attention": {
        # 只有 1 层的小 GPT，训练一会儿，让注意力热力图有意义；max_vocab 小一点，算得快。
        "tiny": dict(corpus="news", max_vocab=1500, block_size=16, n_layer=1, n_head=4, n_embd=64,
                     batch_size=64, max_steps=1500, lr=1e-2, warmup_steps=50, eval_interval=250, eval_iters=20),
        "small": dict(corpus="news", max_vocab=3000, block_size=32, n_layer=1, n_head=4, n_embd=128,
                      batch_size=64, max_steps=3000, lr=3e-3, warmup_steps=100, eval_interval=500, eval_iters=50),
        "full": dict(corpus="news", max_vocab=None, block_size=64, n_layer=1, n_head=8, n_embd=256,
                     batch_size=128, max_steps=5000, lr=2e-3, warmup_steps=200, eval_interval=500, eval_iters=100),
    },
    "03_gpt": {
        # tiny：2 核 CPU 上约 2 分钟。同样 164 万个字，批大小 16 × 1600 步比 32 × 800 步好（验证集 4.540 vs 4.620）：
        # 预算很小时，更新次数比大批次更值钱；不共享权重反而略差（4.566）。
        "tiny": dict(corpus="news", max_vocab=3000, block_size=64, n_layer=4, n_head=4, n_embd=128,
                     dropout=0.0, tie_weights=True, batch_size=16, max_steps=1600, lr=3e-3, min_lr_ratio=0.1,
                     warmup_steps=100, eval_interval=200, eval_iters=10),
        "small": dict(corpus="news", max_vocab=None, block_size=256, n_layer=6, n_head=6, n_embd=384,
                      dropout=0.1, tie_weights=True, batch_size=64, max_steps=5000, lr=1e-3, min_lr_ratio=0.1,
                      warmup_steps=200, eval_interval=250, eval_iters=50),
        "full": dict(corpus="news", max_vocab=None, block_size=512, n_layer=12, n_head=12, n_embd=768,
                     dropout=0.1, tie_weights=True, batch_size=64, max_steps=10000, lr=6e-4, min_lr_ratio=0.1,
                     warmup_steps=500, eval_interval=500, eval_iters=100),
    },
    "04_llama2": {
        # 4.9 节：GPT（第 03 章的结构）对 Llama 2（RMSNorm + RoPE + SwiGLU；n_kv_heads = n_head 即普通多头，和 Llama-2-7B 一样）。
        # 同样的宽度/层数/头数、数据、步数、批大小、种子，学习率等沿用第 03 章为 GPT 调好的配方；参数量只差 0.2%。
        # 预热不能太短：warmup_steps=40（400 步）时 GPT 卡在 6.02 下不来，Llama 正常（5.07）；100 步预热两者都正常。
        # kv_*：4.8 节在参考模型上测 KV 缓存：kv_lengths 是测单步用时的上下文长度（≤ 参考模型的 256），
        # kv_prompt_tokens + kv_new_tokens 是端到端贪心生成的提示长度和新 token 数（合计 ≤ 256）。
        # exercise_steps：参考答案练习 4（n_kv_heads = 1、2、n_head 对比）每个模型训练的步数。
        "tiny": dict(corpus="news", max_vocab=3000, block_size=64, n_layer=4, n_head=4, n_embd=128, n_kv_heads=4,
                     batch_size=16, max_steps=500, lr=3e-3, min_lr_ratio=0.1, warmup_steps=100, eval_interval=100,
                     eval_iters=10, seed=1337, kv_lengths=(32, 64, 128, 192, 256),
                     kv_prompt_tokens=128, kv_new_tokens=60, exercise_steps=200),
        "small": dict(corpus="news", max_vocab=None, block_size=256, n_layer=6, n_head=6, n_embd=384, n_kv_heads=6,
                      batch_size=64, max_steps=3000, lr=1e-3, min_lr_ratio=0.1, warmup_steps=200, eval_interval=250,
                      eval_iters=50, seed=1337, kv_lengths=(32, 64, 128, 192, 256),
                      kv_prompt_tokens=128, kv_new_tokens=120, exercise_steps=1000),
        "full": dict(corpus="news", max_vocab=None, block_size=512, n_layer=12, n_head=12, n_embd=768, n_kv_heads=12,
                     batch_size=64, max_steps=6000, lr=6e-4, min_lr_ratio=0.1, warmup_steps=500, eval_interval=500,
                     eval_iters=100, seed=1337, kv_lengths=(32, 64, 128, 192, 256),
                     kv_prompt_tokens=128, kv_new_tokens=120, exercise_steps=1000),
    },
    "05_pretraining": {
        # python -m course_lib.train --profile tiny --out 目录：预训练一个 Llama（命令行可以用 --键 值 覆盖下面任何一项）。
        # tokenizer_chars：只用语料里均匀取出的这么多字符训练分词器（None = 全部）；n_kv_heads < n_heads 即 GQA。
        # 每步的 token 数 = batch_size × grad_accum_steps × 进程数 × block_size。small、full 两档尚未在 GPU 上实测。
        # 数据预算（pretraining_budget() 算出，tests/test_profile_budgets.py 核对；单进程）：一个 profile 最多把语料读约 4 遍
        # （epoch）：Muennighoff 等（2023，Scaling Data-Constrained Language Models）发现重复到约 4 遍和读新数据差不多，
        # 再多收益就很快变小。small、full 都用 course 语料（train 约 1,662 万字 ≈ 1,535 万 token：词表 6400 的 BPE
        # 在它上面每个 token 约 1.08 个字；名篇、常用成语等重复 knowledge.UPWEIGHT 次、新闻 NEWS_REPEAT 次，已算在内）：
        #   small：每步 32 × 2 × 256 = 16,384 token × 3000 步 ≈ 4,915 万 token ≈ 3.2 遍；
        #   full ：每步 32 × 2 × 512 = 32,768 token × 1500 步 ≈ 4,915 万 token ≈ 3.2 遍（数据不够：更大的模型也只能读这么多遍，
        #          要多训就换更大的语料，见 course_lib.hf_corpus 和 python -m course_lib.train --tokens）。
        #   以前两档都在 mix（约 429 万 token）上训 3000 步：small 11.5 遍、full 22.9 遍。
        # 以下几项只给第 05 章 notebook 用（命令行忽略它们）：
        #   eval_windows：evaluate_loss 最多评估多少个窗口（None = 整个验证集）；
        #   resume_demo_steps：续训演示的总步数（一半时中断）；cpt_*：在 cpt_corpus 上继续预训练的步数和学习率。
        # tiny 的选择（2 核 CPU 实测）：词表 4800 比 3200 每字损失更低（5.22 vs 5.45 nats/字）；共享输入输出嵌入不影响损失、
        # 参数少三分之一；lr 6e-3 比 3e-3 差（6.63 vs 6.54）；每步 4×2 序列、600 步也不如 8×2、300 步（6.62）。
        "tiny": dict(corpus="news", tokenizer_chars=500_000, vocab_size=4800, block_size=128, dim=128, n_layers=4,
                     n_heads=4, n_kv_heads=2, tie_weights=True, batch_size=8, grad_accum_steps=2, max_steps=250, lr=3e-3,
                     min_lr_ratio=0.1, warmup_steps=20, weight_decay=0.1, grad_clip=1.0, eval_interval=50,
                     eval_iters=10, checkpoint_interval=50, compile=False, parallel="ddp", seed=1337,
                     eval_windows=200, resume_demo_steps=12, cpt_corpus="idioms", cpt_steps=40, cpt_lr=1e-3),
        "small": dict(corpus="course", tokenizer_chars=None, vocab_size=6400, block_size=256, dim=384, n_layers=6,
                      n_heads=6, n_kv_heads=2, tie_weights=False, batch_size=32, grad_accum_steps=2, max_steps=3000,
                      lr=1e-3, min_lr_ratio=0.1, warmup_steps=200, weight_decay=0.1, grad_clip=1.0, eval_interval=250,
                      eval_iters=50, checkpoint_interval=500, compile=False, parallel="ddp", seed=1337,
                      eval_windows=None, resume_demo_steps=20, cpt_corpus="idioms", cpt_steps=200, cpt_lr=3e-4),
        "full": dict(corpus="course", tokenizer_chars=None, vocab_size=6400, block_size=512, dim=512, n_layers=8,
                     n_heads=8, n_kv_heads=4, tie_weights=False, batch_size=32, grad_accum_steps=2, max_steps=1500,
                     lr=1e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1, grad_clip=1.0, eval_interval=250,
                     eval_iters=50, checkpoint_interval=500, compile=True, parallel="ddp", seed=1337,
                     eval_windows=None, resume_demo_steps=20, cpt_corpus="idioms", cpt_steps=200, cpt_lr=3e-4),
    },
    "06_sft": {
        # 监督微调（course_lib.sft.train_sft）：从参考基座模型出发全参数微调。tiny：200 步 × 16 条对话（约 25 万个 token），
        # 是 2 核 CPU 上约 90 秒的折中（150 步闲聊几乎只会一句「我不能帮你」，250 步能答「我叫小雁」）。
        # lr=1.5e-3 验证损失略高（3.27 vs 3.12），lr=3e-3 学不会情感题（全答「正面」）。per_example_loss=True（每条样本平均
        # 损失再平均）让只有两个 token 的情感回答不被长回答淹没（80 步实测格式正确率 0.89 → 0.98）。
        # max_new_tokens：评测时每条回复最多生成多少个 token。small、full 两档尚未在 GPU 上实测。
        # 数据预算（sft_budget() 算出，tests/test_profile_budgets.py 核对；单进程）：SFT 训练集 8,320 条（约 62 万 token，
        # 手写对话在里面已各重复 12 次），每一轮（epoch）把每条样本恰好用一次。和预训练一样最多约 4 遍：
        #   tiny 200 步 × 16 条 ≈ 0.4 遍；small 900 步 × 32 条 ≈ 3.5 遍；full 450 步 × 64 条 ≈ 3.5 遍。
        #   以前 small 1500 步（5.8 遍）、full 3000 步（23.1 遍）：远超 4 遍，所以减少了步数（预热、评估间隔按比例缩短）。
        # eval_limit：6.8 节 course_lib.eval 每个知识任务每一半取几道题（bpc 取几篇文档）；forget_steps / forget_pretrain：
        # 6.9 节遗忘实验两次短训练的步数、混进训练集的预训练文本条数（sft_data.pretrain_examples）。
        "tiny": dict(max_len=160, batch_size=16, max_steps=200, lr=1e-3, min_lr_ratio=0.1, warmup_steps=10,
                     weight_decay=0.0, grad_clip=1.0, eval_interval=50, seed=1337, per_example_loss=True,
                     max_new_tokens=48, eval_limit=100, forget_steps=60, forget_pretrain=1500),
        "small": dict(max_len=256, batch_size=32, max_steps=900, lr=5e-4, min_lr_ratio=0.1, warmup_steps=50,
                      weight_decay=0.0, grad_clip=1.0, eval_interval=150, seed=1337, per_example_loss=True,
                      max_new_tokens=64, eval_limit=None, forget_steps=300, forget_pretrain=1500),
        "full": dict(max_len=256, batch_size=64, max_steps=450, lr=5e-4, min_lr_ratio=0.1, warmup_steps=25,
                     weight_decay=0.0, grad_clip=1.0, eval_interval=75, seed=1337, per_example_loss=True,
                     max_new_tokens=64, eval_limit=None, forget_steps=150, forget_pretrain=1500),
    },
    "07_lora": {
        # LoRA（course_lib.lora）与 peft：从第 06 章的 SFT 模型出发，在情感分类题上继续微调。训练用 sft.train_sft（多余的键忽略）。
        # targets：装 LoRA 的线性层；缩放 alpha / r（LoRA 论文：固定 alpha，换秩不调）；lr 给 LoRA，full_lr 给全量微调。
        # train_size：训练用的 train 划分评论条数（None = 全部）；test_size：测试的 test 划分评论条数（None = 全部，
        # 即 eval_items.sentiment_reviews()，和成绩单的情感题相同）；val_size：验证集情感题条数。
        # ranks：7.9 节扫描的秩（α/r 与 rsLoRA 的 α/√r 各一遍；应包含 r，那一点两种缩放相同，直接用 7.5 节的模型）；
        # max_new_tokens：贪心生成核对时回复最多几个 token。7.11 节从基座模型出发的两种 LoRA 用同样的设置。
        "tiny": dict(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), r=8, alpha=16,
                     dropout=0.0, max_len=160, batch_size=8, max_steps=24, lr=1e-3, full_lr=1e-4, min_lr_ratio=0.1,
                     warmup_steps=2, weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=1337, per_example_loss=True,
                     ranks=(2, 8, 32), train_size=None, val_size=200, test_size=None, max_new_tokens=4),
        "small": dict(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), r=8, alpha=16,
                      dropout=0.05, max_len=256, batch_size=32, max_steps=400, lr=1e-3, full_lr=1e-4, min_lr_ratio=0.1,
                      warmup_steps=20, weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=1337, per_example_loss=True,
                      ranks=(2, 8, 32), train_size=None, val_size=400, test_size=None, max_new_tokens=4),
        "full": dict(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), r=16, alpha=32,
                     dropout=0.05, max_len=256, batch_size=64, max_steps=800, lr=1e-3, full_lr=1e-4, min_lr_ratio=0.1,
                     warmup_steps=40, weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=1337, per_example_loss=True,
                     ranks=(4, 16, 64), train_size=None, val_size=400, test_size=None, max_new_tokens=4),
    },
    "08_quantization": {
        # 量化（course_lib.quant）与 bitsandbytes，在参考对话模型（assets/chat_model）上。small、full 两档尚未在 GPU 上实测。
        # bpc_windows：算 bpc 和与 fp32 的 KL 用的 256-token 验证窗口数（course 语料的 val 划分）；
        # task_limits：course_lib.eval 的三项技能题各取前几道（None = 该任务的默认题量）；speed_*：生成速度（token/秒）的测法；
        # qlora：QLoRA 与 LoRA 对照实验的训练配置（两次训练用同一份）。
        "tiny": dict(group_size=64, bpc_windows=16, task_limits=dict(sentiment=100, arithmetic=30, pinyin=16),
                     speed_tokens=32, speed_repeats=2, bnb_compute_dtype="float32",
                     qlora=dict(r=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"], train_examples=512, max_len=128, batch_size=8,
                                max_steps=24, lr=3e-3, min_lr_ratio=0.1, warmup_steps=2, weight_decay=0.0,
                                grad_clip=1.0, eval_interval=8, seed=1337)),
        "small": dict(group_size=64, bpc_windows=64, task_limits=dict(sentiment=400, arithmetic=300, pinyin=200),
                      speed_tokens=64, speed_repeats=3, bnb_compute_dtype="bfloat16",
                      qlora=dict(r=16, alpha=32, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"], train_examples=4000, max_len=256,
                                 batch_size=16, max_steps=200, lr=1e-3, min_lr_ratio=0.1, warmup_steps=20,
                                 weight_decay=0.0, grad_clip=1.0, eval_interval=50, seed=1337)),
        "full": dict(group_size=64, bpc_windows=128, task_limits=dict(sentiment=None, arithmetic=None, pinyin=None),
                     speed_tokens=128, speed_repeats=3, bnb_compute_dtype="bfloat16",
                     qlora=dict(r=16, alpha=32, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"], train_examples=None, max_len=256,
                                batch_size=32, max_steps=500, lr=1e-3, min_lr_ratio=0.1, warmup_steps=50,
                                weight_decay=0.0, grad_clip=1.0, eval_interval=100, seed=1337)),
    },
    "09_chat": {
        # 对话（course_lib.chat）。temperature…max_new_tokens：ChatSession 的默认采样参数；bench_new_tokens：测 KV 缓存提速时
        # 生成多少个 token（bench_repeats：有、没有缓存交替测几遍，各取最快的一遍）；rep_prompts × rep_new_tokens：测重复惩罚的
        # 测试集续写；eval_questions：测「说完就停」的测试题数；
        # eval_limit：9.12 节用 course_lib.eval 的技能题比较两个模型时，每个任务取前几道（诗句接续每一半各取这么多）。
        "tiny": dict(temperature=0.7, top_k=None, top_p=0.9, repetition_penalty=1.1, max_new_tokens=48,
                     bench_new_tokens=120, bench_repeats=3, rep_prompts=6, rep_new_tokens=48, eval_questions=18,
                     eval_limit=20),
        "small": dict(temperature=0.7, top_k=None, top_p=0.9, repetition_penalty=1.1, max_new_tokens=128,
                      bench_new_tokens=192, bench_repeats=3, rep_prompts=32, rep_new_tokens=96, eval_questions=96,
                      eval_limit=100),
        "full": dict(temperature=0.7, top_k=None, top_p=0.9, repetition_penalty=1.1, max_new_tokens=128,
                     bench_new_tokens=192, bench_repeats=3, rep_prompts=64, rep_new_tokens=96, eval_questions=192,
                     eval_limit=200),
    },
    "10_alignment": {
        # 偏好对齐（course_lib.align），从参考对话模型 assets/chat_model 出发。dpo / grpo：两次训练的配置（Trainer 的键 +
        # beta；grpo 另有 group_size、temperature、max_new_tokens）。pairs：在线偏好数据——每道 train 题采样 samples 条
        # （温度 temperature），没通过验证的做 rejected；refusal / arithmetic：各取几道题（None = 全部）。
        # overopt_lr：10.6 节「过度优化」那次 DPO 的学习率；GRPO（10.7 节）从那个模型出发；
        # test_arith：算术 test 题取几道（采样、贪心各评一遍）；heldout_arith：留出集偏好对里加几道 test 算术题；
        # eval_limit：course_lib.eval 的技能题和 bpc 每项取前几道（看无关的能力有没有被破坏）。small、full 尚未在 GPU 上实测。
        "tiny": dict(dpo=dict(max_len=128, batch_size=8, max_steps=40, lr=5e-5, min_lr_ratio=0.1, warmup_steps=2,
                              weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=0, beta=0.1),
                     pairs=dict(samples=2, temperature=1.0, refusal=None, arithmetic=200, max_new_tokens=40),
                     overopt_lr=2e-4,
                     grpo=dict(max_len=128, batch_size=64, max_steps=12, lr=5e-5, min_lr_ratio=1.0, warmup_steps=0,
                               weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=0, beta=0.04, group_size=8,
                               temperature=1.0, max_new_tokens=12),
                     test_arith=300, heldout_arith=100, eval_limit=100),
        "small": dict(dpo=dict(max_len=192, batch_size=16, max_steps=100, lr=5e-5, min_lr_ratio=0.1, warmup_steps=5,
                               weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=0, beta=0.1),
                      pairs=dict(samples=4, temperature=1.0, refusal=None, arithmetic=1000, max_new_tokens=48),
                      overopt_lr=2e-4,
                      grpo=dict(max_len=192, batch_size=256, max_steps=100, lr=3e-5, min_lr_ratio=1.0, warmup_steps=0,
                                weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=0, beta=0.04, group_size=16,
                                temperature=1.0, max_new_tokens=16),
                      test_arith=None, heldout_arith=None, eval_limit=None),
        "full": dict(dpo=dict(max_len=256, batch_size=32, max_steps=200, lr=5e-5, min_lr_ratio=0.1, warmup_steps=10,
                              weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=0, beta=0.1),
                     pairs=dict(samples=4, temperature=1.0, refusal=None, arithmetic=None, max_new_tokens=64),
                     overopt_lr=2e-4,
                     grpo=dict(max_len=256, batch_size=512, max_steps=200, lr=3e-5, min_lr_ratio=1.0, warmup_steps=0,
                               weight_decay=0.0, grad_clip=1.0, eval_interval=0, seed=0, beta=0.04, group_size=16,
                               temperature=1.0, max_new_tokens=16),
                     test_arith=None, heldout_arith=None, eval_limit=None),
    },
    "11_deploy": {
        # 部署（course_lib.gguf / serve / webui），从参考对话模型出发。quality_docs：量化代价的 bpc 每个领域取前几篇验证集文档
        # （None = course_lib.eval 的全部，约每个领域 2 万字）；kl_docs：KL 和 top-1 每个领域取前几篇；
        # max_tokens：服务器演示里每条回复最多几个 token；concurrent：并发演示同时发几个请求；slots：服务器的批量解码槽位数。
        "tiny": dict(quality_docs=60, kl_docs=20, max_tokens=48, concurrent=8, slots=8),
        "small": dict(quality_docs=None, kl_docs=50, max_tokens=64, concurrent=8, slots=16),
        "full": dict(quality_docs=None, kl_docs=50, max_tokens=64, concurrent=8, slots=16),
    },
}


def active_profile(name: str | None = None) -> str:
    """返回当前生效的 profile 名字。不认识的名字给出中文错误。"""
    name = name or os.environ.get("COURSE_PROFILE") or ("small" if torch.cuda.is_available() else "tiny")
    if not isinstance(name, str):
        raise ValueError(f"profile 应该是字符串 {', '.join(map(repr, PROFILES))} 之一，收到 {name!r}。")
    name = name.strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"不认识的 profile {name!r}。只能是 {', '.join(PROFILES)} 之一："
            "例如在终端里 export COURSE_PROFILE=tiny，或在 notebook 里 os.environ['COURSE_PROFILE']='tiny'。"
        )
    return name


def chapter_config(chapter: str, profile: str | None = None, **overrides) -> dict:
    """某一章在当前 profile 下的超参数（一个新的 dict，可以随便改）。"""
    if chapter not in CHAPTERS:
        raise KeyError(f"没有第 {chapter!r} 章的配置；已有：{', '.join(CHAPTERS)}。")
    cfg = dict(CHAPTERS[chapter][active_profile(profile)])
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise KeyError(f"第 {chapter} 章的配置里没有这些键：{sorted(unknown)}；可用的键：{sorted(cfg)}。")
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------- 数据预算：一个 profile 把训练数据读几遍
# 词表 6400 的 BPE（tokenizer_chars=None，即在整个 train 划分上训练，和 small、full 的设置相同）在各语料上实测的
# 「每个 token 几个字」：load_corpus(语料, "train") 的字符数（含篇与篇之间的换行）÷ build_token_bin 写出的 token 数
# （含每篇末尾的 eos）。course：16,616,810 字 / 15,348,626 token；mix：5,455,196 字 / 4,287,560 token。
# 没有实测值的（语料, 词表）按 1 字 = 1 token 估算：BPE 的 token 数一般比字数少 5%–30%（只有生僻字走字节回退时，
# 一个字才会变成几个 token），所以那时算出的遍数偏低。想要准确的数，把分词器传给 pretraining_budget(tokenizer=...)。
CHARS_PER_TOKEN: dict[tuple[str, int], float] = {("course", 6400): 1.0826, ("mix", 6400): 1.2723}
MAX_EPOCHS = 4  # 一个 profile 最多把训练数据读约这么多遍（见上面 05、06 两章的注释）


def pretraining_budget(profile: str | None = None, world_size: int = 1, tokenizer=None, **overrides) -> dict:
    """第 05 章预训练这一档的数据预算：每步多少 token、一共多少 token、语料有多少 token、读几遍（epochs）。

    - tokens_per_step = batch_size × grad_accum_steps × world_size × block_size；planned_tokens = 它 × max_steps；
    - corpus_tokens：给了 tokenizer 时逐篇分词、精确计数（和 build_token_bin 写出的一样，每篇带一个 eos；course 语料约
      需十几秒）；否则用字符数 ÷ CHARS_PER_TOKEN 里的实测值估算（chars_per_token_source 说明用的是哪一种）；
    - epochs = planned_tokens / corpus_tokens。overrides 同 chapter_config，例如 max_steps=1000。

    >>> pretraining_budget("small")["epochs"]   # ≈ 3.2
    """
    from .data import load_corpus

    p = chapter_config("05_pretraining", profile, **overrides)
    tokens_per_step = p["batch_size"] * p["grad_accum_steps"] * world_size * p["block_size"]
    text = load_corpus(p["corpus"], "train")
    if tokenizer is not None:
        corpus_tokens = sum(len(tokenizer.encode(doc, eos=True)) for doc in text.split("\n"))
        source = f"实测：用给定的分词器（词表 {tokenizer.vocab_size}）逐篇分词"
    elif (p["corpus"], p["vocab_size"]) in CHARS_PER_TOKEN:
        corpus_tokens = round(len(text) / CHARS_PER_TOKEN[p["corpus"], p["vocab_size"]])
        source = f"估算：字符数 ÷ {CHARS_PER_TOKEN[p['corpus'], p['vocab_size']]}（CHARS_PER_TOKEN 里的实测值）"
    else:
        corpus_tokens = len(text)
        source = "估算：1 字 = 1 token（没有这个语料和词表的实测值；实际 token 更少，遍数更多）"
    planned = tokens_per_step * p["max_steps"]
    return {"profile": active_profile(profile), "corpus": p["corpus"], "tokens_per_step": tokens_per_step,
            "max_steps": p["max_steps"], "planned_tokens": planned, "corpus_chars": len(text),
            "corpus_tokens": corpus_tokens, "chars_per_token": len(text) / corpus_tokens,
            "chars_per_token_source": source, "epochs": planned / corpus_tokens}


def sft_budget(profile: str | None = None, world_size: int = 1, tokenizer=None, **overrides) -> dict:
    """第 06 章 SFT 这一档的数据预算：训练集多少条、多少 token，一共读几遍（epochs）。

    SFT 的批次按条取（LengthGroupedBatches）：每一轮把每条样本恰好用一次，一轮有 ceil(条数 / (batch_size × world_size))
    批，所以 epochs = max_steps / 每轮的批数——这是精确的，不是估算。tokenizer 默认是参考基座模型的分词器
    （第 06 章从它出发）；条数和 token 数按 SFTDataset（截断到 max_len、跳过没有可训练 token 的样本）计。
    """
    import math

    from .sft import SFTDataset
    from .sft_data import build_sft_examples

    p = chapter_config("06_sft", profile, **overrides)
    if tokenizer is None:
        from .reference import reference_dir
        from .tokenizer import BPETokenizer
        tokenizer = BPETokenizer.load(reference_dir())
    data = SFTDataset(build_sft_examples("train"), tokenizer, p["max_len"])
    examples_per_step = p["batch_size"] * world_size
    batches_per_epoch = math.ceil(len(data) / examples_per_step)
    return {"profile": active_profile(profile), "n_examples": len(data), "n_tokens": data.stats["n_tokens"],
            "examples_per_step": examples_per_step, "max_steps": p["max_steps"],
            "planned_examples": examples_per_step * p["max_steps"], "batches_per_epoch": batches_per_epoch,
            "epochs": p["max_steps"] / batches_per_epoch}


def budget_markdown() -> str:
    """README「硬件档位」一节的数据预算表（tests/test_profile_budgets.py 核对 README 里的就是它）。"""
    rows = ["| profile | 第 05 章预训练：语料 | 计划读的 token | 约几遍语料 | 第 06 章 SFT：约几遍训练集 |",
            "|---|---|---|---|---|"]
    for profile in PROFILES:
        b, s = pretraining_budget(profile), sft_budget(profile)
        note = "（按 1 字 = 1 token 估，偏少）" if b["chars_per_token_source"].startswith("估算：1 字") else ""
        rows.append(f"| `{profile}` | `{b['corpus']}` | {b['planned_tokens'] / 1e4:,.0f} 万 | {b['epochs']:.1f}{note} | "
                    f"{s['epochs']:.1f} |")
    return "\n".join(rows)
