"""坏输入扫一遍：每个公开的加载函数、构造函数和命令行，对错误的类型、空的和越界的值、错误的路径，都给出一句中文说明
（或者有定义的行为），而不是 PyTorch / numpy / sentencepiece / json / argparse 的英文报错、悄悄算错、或者写一半的文件。

读文件类的坏输入在 tests/test_bad_input_files.py，对话和训练设置的其余情形在 tests/test_bad_input.py。
"""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import exercises, hf, lora, quant, sft, sft_data, sft_eval, token_data
from course_lib.attention import CausalSelfAttention
from course_lib.bigram import BigramLM, bigram_counts, bigram_nll, bigram_probs
from course_lib.chat import ChatSession
from course_lib.chat_format import encode_chat
from course_lib.chat_models import load_chat_model
from course_lib.checkpoint import latest_checkpoint, load_model, save_model
from course_lib.data import load_text_documents
from course_lib.device import seed_everything
from course_lib.generate import StreamDecoder, generation_speed, sample_next
from course_lib.gpt import GPT, GPTConfig
from course_lib.hf_adapter import HFCausalLM
from course_lib.llama import Llama, LlamaConfig
from course_lib.losses import evaluate_loss
from course_lib.profiles import active_profile, chapter_config
from course_lib.tokenizer import BPETokenizer, CharTokenizer
from course_lib.train import TrainConfig, Trainer, get_batch

ROOT = Path(__file__).resolve().parents[1]
CJK = lambda s: any("\u4e00" <= c <= "\u9fff" for c in s)  # noqa: E731
MSGS = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
CHAR = CharTokenizer.from_text("我爱北京天安门，天安门上太阳升。")


@pytest.fixture(scope="module")
def bpe(small_bpe):
    return small_bpe(n_lines=150)


def _llama(vocab_size=64, **kw):
    torch.manual_seed(0)
    return Llama(LlamaConfig(**{**dict(vocab_size=vocab_size, max_seq_len=32, dim=32, n_layers=1, n_heads=2,
                                       n_kv_heads=1), **kw})).eval()


def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=CHAR.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


def _chinese(excinfo_or_text, needle=None):
    text = str(excinfo_or_text.value) if hasattr(excinfo_or_text, "value") else excinfo_or_text
    assert CJK(text), text
    if needle:
        assert needle in text, text


# ---------------------------------------------------------------- 路径：None、空字符串、别的类型
@pytest.mark.parametrize("call", [
    lambda m, d: load_model(None), lambda m, d: save_model(m, None), lambda m, d: latest_checkpoint(None),
    lambda m, d: BPETokenizer.load(None), lambda m, d: CharTokenizer.load(None),
    lambda m, d: token_data.load_token_bin(None), lambda m, d: hf.import_hf(None), lambda m, d: hf.export_hf(m, None),
    lambda m, d: lora.load_adapter(m, None), lambda m, d: sft_data.load_alpaca(None),
    lambda m, d: load_text_documents(None), lambda m, d: load_chat_model(5),
], ids=["load_model", "save_model", "latest_checkpoint", "BPE.load", "Char.load", "load_token_bin", "import_hf",
        "export_hf", "load_adapter", "load_alpaca", "load_text_documents", "load_chat_model"])
def test_paths_that_are_not_paths(call, tmp_path):
    with pytest.raises(TypeError, match="应该是一个路径") as e:
        call(_llama(), tmp_path)
    _chinese(e)


def test_empty_path_is_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("用户自己的文件", encoding="utf-8")
    with pytest.raises(ValueError, match="不能是空字符串"):
        save_model(_llama(), "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    docs = tmp_path / "docs.txt"
    docs.write_text("第一篇\n第二篇\n", encoding="utf-8")
    assert load_text_documents(docs) == ["第一篇", "第二篇"]  # pathlib.Path 也可以


# ---------------------------------------------------------------- 保存：dtype、extra 写坏文件之前就拒绝
@pytest.mark.parametrize("kwargs, needle", [(dict(dtype="float16"), "浮点类型"), (dict(dtype=torch.int8), "浮点类型"),
                                            (dict(extra="x"), "字典"), (dict(extra={"config": 1}), "不能有"),
                                            (dict(extra={"t": torch.zeros(1)}), "JSON")])
def test_save_model_refuses_bad_dtype_and_extra(kwargs, needle, tmp_path):
    with pytest.raises(ValueError, match=needle):
        save_model(_llama(), tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_devices_and_dtypes_when_loading(tmp_path):
    folder = save_model(_llama(), tmp_path / "m")
    with pytest.raises(ValueError, match="不认识的设备 'tpu'"):
        load_model(folder, device="tpu")
    with pytest.raises(ValueError, match="不认识的设备 'tpu'"):
        load_chat_model(folder, device="tpu")
    hf_dir = hf.export_hf(_llama(), tmp_path / "hf")
    with pytest.raises(ValueError, match="不认识的设备 'tpu'"):
        hf.import_hf(hf_dir, device="tpu")
    for dtype in ("float16", torch.int64):
        with pytest.raises(ValueError, match="浮点类型"):
            hf.import_hf(hf_dir, dtype=dtype)


# ---------------------------------------------------------------- token id：字符串、浮点数、多维
@pytest.mark.parametrize("ids", ["abc", [1.5], None, torch.tensor([[1, 2]]), torch.tensor([1.0, 2.0]), ["5"]],
                         ids=["str", "float", "None", "2D", "float tensor", "numeric str"])
def test_decode_wants_integer_ids(ids, bpe):
    for tok in (CHAR, bpe):
        with pytest.raises(ValueError, match="要解码的 token id 应该是整数 id 的列表"):
            tok.decode(ids)
    assert bpe.decode(np.array(bpe.encode("你好"), dtype=np.uint16)) == "你好"  # .bin 里的 uint16 照常可以
    with pytest.raises(ValueError, match="id_to_piece 要的是一个整数 id"):
        bpe.id_to_piece("a")


@pytest.mark.parametrize("prompt", ["你好", b"ab", None, [1.5, 2.0], torch.tensor([[[1, 2]]])],
                         ids=["str", "bytes", "None", "floats", "3D"])
def test_prompts_must_be_token_ids(prompt):
    with pytest.raises(ValueError, match="提示（prompt）应该是整数 id 的列表"):
        _llama().generate(prompt, 3)


def test_stop_ids_may_be_one_id():
    model, prompt = _llama(), [5, 6, 7]
    assert torch.equal(model.generate(prompt, 3, temperature=0, stop_ids=1),
                       model.generate(prompt, 3, temperature=0, stop_ids=[1]))
    with pytest.raises(ValueError, match="stop_ids 应该是整数 id 的列表"):
        model.generate(prompt, 3, stop_ids="x")


# ---------------------------------------------------------------- 模型的输入与 targets
@pytest.mark.parametrize("idx", [torch.tensor([1, 2]), torch.tensor([[1.0, 2.0]]), [[1, 2]],
                                 torch.zeros(1, 2, 3, dtype=torch.long)], ids=["1D", "float", "list", "3D"])
def test_model_inputs_are_B_by_T_integer_tensors(idx):
    for model in (_gpt(), _llama(), BigramLM(CHAR.vocab_size)):
        if isinstance(model, BigramLM) and torch.is_tensor(idx) and idx.dim() != 2 and not idx.is_floating_point():
            continue  # 二元模型逐位置查表，任何形状的整数张量都行
        with pytest.raises(ValueError, match=r"模型的输入应该是 \(B, T\) 的整数张量"):
            model(idx)


@pytest.mark.parametrize("targets, needle", [(torch.tensor([[1, 2, 3]]), "形状"), (torch.tensor([[1, 999]]), "超出词表"),
                                             (torch.tensor([[1.0, 2.0]]), "整数")])
def test_targets_are_checked(targets, needle):
    for model in (_gpt(), _llama(), BigramLM(CHAR.vocab_size)):
        with pytest.raises(ValueError, match=f"targets.*{needle}"):
            model(torch.tensor([[1, 2]]), targets)


def test_models_need_their_config_class():
    with pytest.raises(TypeError, match="GPT 需要一个 GPTConfig，收到 dict"):
        GPT({"vocab_size": 10})
    with pytest.raises(TypeError, match="Llama 需要一个 LlamaConfig，收到 NoneType"):
        Llama(None)


# ---------------------------------------------------------------- 配置：字符串当布尔、None 当数字
@pytest.mark.parametrize("make, needle", [
    (lambda: GPTConfig(vocab_size=10, tie_weights="no"), "tie_weights 必须是 True 或 False"),
    (lambda: GPTConfig(vocab_size=10, bias=None), "bias 必须是 True 或 False"),
    (lambda: LlamaConfig(vocab_size=10, tie_weights="false"), "tie_weights 必须是 True 或 False"),
    (lambda: LlamaConfig(vocab_size=10, norm_eps="1e-5"), "norm_eps 必须是大于 0 的数"),
    (lambda: LlamaConfig(vocab_size=10, rope_theta=None), "rope_theta 必须是大于 0 的数"),
    (lambda: LlamaConfig(vocab_size=10, ffn_dim_multiplier="1.3"), "ffn_dim_multiplier"),
    (lambda: TrainConfig(betas=None), "betas"), (lambda: TrainConfig(betas=0.9), "betas"),
    (lambda: TrainConfig(warmup_steps=-5), "warmup_steps 必须是非负整数"),
    (lambda: TrainConfig(min_lr_ratio=2), "min_lr_ratio"), (lambda: TrainConfig(progress="no"), "progress"),
    (lambda: TrainConfig(resume=5), "resume 应该是一个路径"),
    (lambda: CausalSelfAttention(64, 0), "n_head 必须是正整数"), (lambda: CausalSelfAttention(64, -1), "n_head"),
    (lambda: _llama().new_cache(0), "batch_size 必须是正整数"),
])
def test_config_types(make, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        make()


def test_numpy_ints_in_configs_are_fine(tmp_path):
    cfg = GPTConfig(vocab_size=np.int64(10), block_size=np.int64(8), n_layer=1, n_head=1, n_embd=8)
    assert type(cfg.vocab_size) is int
    load_model(save_model(GPT(cfg), tmp_path / "m"))  # config.json 存得下
    seed_everything(np.int64(3))


def test_checkpoint_dir_that_is_a_file(tmp_path):
    file = tmp_path / "ckpt"
    file.write_text("x")
    with pytest.raises(ValueError, match="是一个文件"):
        TrainConfig(checkpoint_dir=str(file))


# ---------------------------------------------------------------- 训练：模型、数据、取批、评估
def test_trainer_inputs():
    tokens = torch.randint(0, CHAR.vocab_size, (200,))
    with pytest.raises(TypeError, match="Trainer 需要一个 PyTorch 模型"):
        Trainer(None, tokens, None, TrainConfig(block_size=8))
    with pytest.raises(TypeError, match="config 应该是 TrainConfig"):
        Trainer(_gpt(), tokens, None, {"max_steps": 5})
    with pytest.raises(ValueError, match="token id -1"):
        Trainer(_gpt(), torch.tensor([-1] * 100), None, TrainConfig(block_size=8, progress=False))
    trainer = Trainer(_gpt(), tokens, None, TrainConfig(block_size=8, batch_size=2, max_steps=2, progress=False,
                                                         log=False, eval_interval=0))
    for stop_at in ("1", -1):
        with pytest.raises(ValueError, match="stop_at 必须是非负整数"):
            trainer.fit(stop_at=stop_at)
    assert trainer.step == 0


@pytest.mark.parametrize("args, needle", [(([1, 2, 3] * 20, 4, 2), "一维的整数 token 序列"), (("abc" * 20, 4, 2), "收到 str"),
                                          ((None, 0, 2), "block_size 必须是正整数"), ((None, -1, 2), "block_size"),
                                          ((None, 4, 2.5), "batch_size 必须是正整数"), ((None, 4, -1), "batch_size")])
def test_get_batch_arguments(args, needle):
    data, block, batch = args
    with pytest.raises(ValueError, match=needle):
        get_batch(torch.arange(100) if data is None else data, block, batch)


@pytest.mark.parametrize("kwargs, needle", [(dict(data="abc" * 100), "一维的整数 token 序列"), (dict(block_size=0), "block_size"),
                                            (dict(block_size="8"), "block_size"), (dict(batch_size=0), "batch_size"),
                                            (dict(max_windows=-1), "max_windows")])
def test_evaluate_loss_arguments(kwargs, needle):
    args = {"data": torch.randint(0, CHAR.vocab_size, (200,)), "block_size": 8, **kwargs}
    with pytest.raises(ValueError, match=needle):
        evaluate_loss(_gpt(), **args)


# ---------------------------------------------------------------- 二元模型
@pytest.mark.parametrize("call, needle", [
    (lambda: bigram_counts("abc", 10), "一维的整数 token 序列"), (lambda: bigram_counts([1, 2], 10), "收到 list"),
    (lambda: bigram_counts(torch.tensor([1, 2]), 0), "vocab_size"), (lambda: bigram_counts(torch.tensor([1, 12]), 10), "12"),
    (lambda: bigram_counts(torch.tensor([1, -1]), 10), "-1"), (lambda: bigram_counts(torch.tensor([[1, 2]]), 10), "形状"),
    (lambda: bigram_probs("x"), "计数矩阵"), (lambda: bigram_probs(torch.ones(3, 3), "1"), "smoothing"),
    (lambda: bigram_probs(torch.ones(3, 3), float("nan")), "smoothing"),
    (lambda: bigram_nll(torch.full((5, 5), 0.2), torch.tensor([1, 7])), "7"),
    (lambda: bigram_nll(torch.full((5, 5), 0.2), torch.tensor([1])), "至少要两个"),
    (lambda: BigramLM(0), "正整数"), (lambda: BigramLM(2.5), "正整数"), (lambda: BigramLM("10"), "正整数"),
])
def test_bigram_inputs(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


# ---------------------------------------------------------------- 采样与流式解码
@pytest.mark.parametrize("kwargs, needle", [
    (dict(logits="x"), "logits 应该是"), (dict(logits=torch.tensor([[float("nan"), 1.0]])), "NaN"),
    (dict(logits=torch.full((1, 3), float("-inf"))), "-inf"),
    (dict(repetition_penalty=1.2, prev_ids=[[1]]), "prev_ids 应该是"),
    (dict(repetition_penalty=1.2, prev_ids=torch.tensor([[9]])), "prev_ids 里有 id 超出"),
    (dict(generator="g"), "generator 应该是 torch.Generator"),
])
def test_sample_next_inputs(kwargs, needle):
    kwargs = {"logits": torch.randn(1, 5), **kwargs}
    with pytest.raises(ValueError, match=needle):
        sample_next(kwargs.pop("logits"), **kwargs)


def test_seeds_decoders_and_speed():
    for seed in ("x", 1.5):
        with pytest.raises(ValueError, match="seed 必须是整数"):
            _gpt().generate(torch.tensor([[1]]), 2, seed=seed)
    with pytest.raises(TypeError, match="StreamDecoder 需要一个"):
        StreamDecoder(None)
    with pytest.raises(ValueError, match="push 要的是一个 token id"):
        StreamDecoder(CHAR.decode).push("a")
    with pytest.raises(ValueError, match="new_tokens 必须是正整数"):
        generation_speed(_llama(), [1, 2], new_tokens="5")


# ---------------------------------------------------------------- 分词器
@pytest.mark.parametrize("call, needle", [
    (lambda: CharTokenizer(None), "单个字符组成的列表"), (lambda: CharTokenizer([1, 2]), "单个字符"),
    (lambda: CharTokenizer(["ab", "c"]), "单个字符"), (lambda: CharTokenizer.from_text("abc", max_vocab=2.5), "max_vocab"),
    (lambda: CharTokenizer.from_text("abc", max_vocab="10"), "max_vocab"),
    (lambda: BPETokenizer.train(None), "应该是 str"), (lambda: BPETokenizer.train(123), "应该是 str"),
    (lambda: BPETokenizer.train("你好", vocab_size="6400"), "vocab_size 必须是整数"),
    (lambda: BPETokenizer.train("你好", vocab_size=6400.5), "vocab_size 必须是整数"),
    (lambda: BPETokenizer.train("你好", character_coverage="0.99"), "character_coverage"),
    (lambda: BPETokenizer("not bytes"), "tokenizer.model 文件的内容"), (lambda: BPETokenizer(None), "BPETokenizer.load"),
])
def test_tokenizer_inputs(call, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        call()


def test_token_data_inputs(bpe, tmp_path):
    with pytest.raises(TypeError, match="documents 应该是文档的列表"):
        token_data.build_token_bin(None, bpe, tmp_path / "t.bin", progress=False)
    assert not (tmp_path / "t.bin").exists()
    path = tmp_path / "ok.bin"
    token_data.build_token_bin(["你好", "世界"], bpe, path, progress=False)
    with pytest.raises(TypeError, match="需要 BPETokenizer.*CharTokenizer"):
        token_data.load_token_bin(path, CHAR)
    for tok in (CHAR, None):
        with pytest.raises(TypeError, match="prepare_pretraining_data 需要 BPETokenizer"):
            token_data.prepare_pretraining_data(tok)


@pytest.mark.parametrize("name, content, kwargs, needle", [
    ("num.json", "5", {}, "应该是文档的列表"), ("str.json", '"一段文字"', {}, "应该是文档的列表"),
    ("n.jsonl", '{"text": null}\n', {}, "应该是字符串"), ("l.json", '[[1, 2], {"text": "好"}]', {}, "应该是字符串"),
    ("d.txt", "一\n二\n", dict(max_docs=-1), "max_docs"), ("d.txt", "一\n二\n", dict(max_docs="2"), "max_docs"),
    ("d.txt", "一\n二\n", dict(max_docs=0), "max_docs"),
])
def test_text_documents_records(name, content, kwargs, needle, tmp_path):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=needle):
        load_text_documents(str(tmp_path / name), **kwargs)


# ---------------------------------------------------------------- Hugging Face
def test_export_hf_inputs(tmp_path):
    garbage = tmp_path / "g.model"
    garbage.write_bytes(b"garbage")
    for sp, needle in ((garbage, "不是 sentencepiece 模型文件"), (tmp_path, "它是一个文件夹")):
        with pytest.raises((ValueError, FileNotFoundError), match=needle):
            hf.export_hf(_llama(), tmp_path / "out", sp_model_path=sp)
    for bos in ("1", 1.5):
        with pytest.raises(ValueError, match="bos_id 必须是非负整数"):
            hf.export_hf(_llama(), tmp_path / "out", bos_id=bos)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="rope_scaling 应该是一个对象"):
        hf.config_from_hf({"model_type": "llama", "rope_scaling": "linear"})
    with pytest.raises(ValueError, match="norm_eps"):
        hf.config_from_hf({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "intermediate_size": 16, "rms_norm_eps": "x"})
    for model in ("x", _llama()):
        with pytest.raises(TypeError, match="HFCausalLM 包装的是 transformers"):
            HFCausalLM(model)


# ---------------------------------------------------------------- SFT：数据、编码、训练、评测
def test_sft_inputs(bpe):
    with pytest.raises(TypeError, match="BPETokenizer.*CharTokenizer"):
        sft.encode_sft_example(MSGS, CHAR)
    for max_len in (-5, "10"):
        with pytest.raises(ValueError, match="max_len 必须是正整数"):
            sft.encode_sft_example(MSGS, bpe, max_len=max_len)
    for kwargs, needle in ((dict(max_len="256"), "max_len"), (dict(max_len=8.5), "max_len"), (dict(pad_id="x"), "pad_id")):
        with pytest.raises(ValueError, match=needle):
            sft.SFTDataset([MSGS], bpe, **kwargs)
    with pytest.raises(ValueError, match='没有 "messages" 键'):
        sft.SFTDataset([{"msgs": MSGS}], bpe)
    for examples in (None, []):
        with pytest.raises(ValueError, match="examples 应该是非空的样本列表"):
            sft.SFTDataset(examples, bpe)
    with pytest.raises(TypeError, match="config 应该是 chapter_config"):
        sft.train_sft(_llama(bpe.vocab_size), bpe, [MSGS], config="06_sft")
    with pytest.raises(TypeError, match="train_sft 需要一个 PyTorch 模型"):
        sft.train_sft("x", bpe, [MSGS], config=chapter_config("06_sft"))


def test_sft_data_inputs(tmp_path):
    for sizes, needle in (({"sentiment": -1}, "非负整数"), ({"sentiment": "5"}, "非负整数"), ("sentiment", "字典")):
        with pytest.raises(ValueError, match=needle):
            sft_data.build_sft_examples("val", sizes)
    cases = [("a.json", '[{"instruction": 5, "input": "x", "output": "y"}]', sft_data.load_alpaca, "instruction 应该是字符串"),
             ("a.json", '[{"instruction": "x", "output": null}]', sft_data.load_alpaca, "第 1 条：output 应该是字符串"),
             ("s.json", '[{"conversations": [1, 2]}]', sft_data.load_sharegpt, "消息应该是对象"),
             ("d.jsonl", '{"id": "a"}\n', sft_data.load_dialogues, '缺少 "messages"')]
    for name, content, load, needle in cases:
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match=needle):
            load(tmp_path / name)


def test_sft_eval_inputs(bpe):
    model = _llama(bpe.vocab_size)
    for examples in ([{"task": "x"}], "abc"):
        with pytest.raises(ValueError, match="evaluate_sft 的第 1 道题.*缺少"):
            sft_eval.evaluate_sft(model, bpe, examples)
    for example, reply, needle in (({"task": "sentiment", "answer": "正面"}, 5, "reply 应该是"), ({}, "正面", "缺少"),
                                   (None, "x", "缺少"), ({"task": "idiom_chain", "answer": "x"}, "x", "messages")):
        with pytest.raises((ValueError, TypeError), match=needle):
            sft_eval.score_reply(example, reply)


# ---------------------------------------------------------------- LoRA 与量化
def test_lora_inputs(tmp_path):
    for targets in (None, 5):
        with pytest.raises(ValueError, match="targets 应该是非空的模块名列表"):
            lora.inject_lora(_llama(), targets)
    model = _llama()
    lora.inject_lora(model)
    folder = lora.save_adapter(model, tmp_path / "lora")
    for call in (lambda: lora.inject_lora("x"), lambda: lora.load_adapter("x", folder), lambda: lora.merge_lora("x")):
        with pytest.raises(TypeError, match="需要一个 PyTorch 模型"):
            call()


def test_quant_inputs():
    for w in ("x", [[1.0, 2.0]]):
        with pytest.raises(TypeError, match="权重必须是浮点张量"):
            quant.quantize(w, "int8_tensor")
    with pytest.raises(TypeError, match="quantize_model 需要一个 PyTorch 模型"):
        quant.quantize_model("x", "nf4")
    with pytest.raises(TypeError, match="QuantizedTensor"):
        quant.QuantLinear("x")
    model = quant.quantize_model(_llama(tie_weights=True), "int8_tensor", skip="lm_head")  # 一个名字，不是七个字母
    assert not isinstance(model.lm_head, quant.QuantLinear) and isinstance(model.layers[0].mlp.up_proj, quant.QuantLinear)


# ---------------------------------------------------------------- 对话、配置、随机种子
def test_chat_profile_and_seed_inputs(bpe):
    for seed in ("x", 1.5):
        with pytest.raises(ValueError, match="seed 必须是整数"):
            ChatSession(_llama(bpe.vocab_size), bpe, system=None, seed=seed)
        with pytest.raises(ValueError, match="seed 必须是整数"):
            seed_everything(seed)
    with pytest.raises(TypeError, match="对话模板需要 course_lib.tokenizer.BPETokenizer"):
        encode_chat(MSGS, CHAR)
    for call in (lambda: chapter_config("03_gpt", 5), lambda: active_profile(5)):
        with pytest.raises(ValueError, match="profile 应该是字符串"):
            call()


# ---------------------------------------------------------------- 练习的批改：答错类型也只是 ❌
@pytest.mark.parametrize("check, args", [
    (exercises.check_01_uniform_nll, ("abc", 10)), (exercises.check_01_uniform_nll, (None, 10)),
    (exercises.check_02_attention_params, ("x", 64)), (exercises.check_02_attention_params, (16640.5, 64)),
    (exercises.check_02_bidirectional, (lambda q, k, v: [1],)),
    (exercises.check_03_gpt_params, (None, GPTConfig(vocab_size=10))), (exercises.check_04_hidden_dim, ("eleven",)),
    (exercises.check_04_hidden_dim, (float("inf"),)), (exercises.check_04_kv_cache_bytes, (None, 1, 1, 1, 1)),
    (exercises.check_07_lora_params, ("x", 4, 4, 2)), (exercises.check_08_double_quant_bits, ([4.1],)),
], ids=lambda x: getattr(x, "__name__", None) or repr(x)[:12])
def test_checkers_answer_wrong_types_with_a_cross(check, args, capsys):
    assert check(*args) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith("❌") and CJK(out) and len(out.splitlines()) == 1, out


def test_checkers_on_wrong_return_types_and_valid_strings(bpe, capsys):
    assert exercises.check_06_labels(lambda ids: ["a"] * len(ids), bpe) is False
    for fn in (lambda i, d: None, lambda i, d: i):
        assert exercises.check_09_stream_pieces(fn, bpe) is False
    assert capsys.readouterr().out.count("❌") == 3
    assert exercises.check_04_hidden_dim("11008") is True  # 数字写成字符串照样算对
    assert exercises.check_04_hidden_dim(11008.0) is True


# ---------------------------------------------------------------- 成对的文件一起换上：写到一半出错，旧的那一对还能用
def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_tokenizer_pair_survives_a_failed_save(bpe, small_bpe, tmp_path, monkeypatch):
    folder = bpe.save(tmp_path / "tok")
    (folder / "README.md").write_text("说明", encoding="utf-8")
    other = small_bpe(n_lines=60)
    import course_lib.tokenizer
    monkeypatch.setattr(course_lib.tokenizer, "atomic_write_json", _disk_full)
    with pytest.raises(OSError):
        other.save(folder)
    monkeypatch.undo()
    assert BPETokenizer.load(folder).fingerprint == bpe.fingerprint  # 旧的那一对原样还在
    assert (folder / "README.md").read_text(encoding="utf-8") == "说明"


def test_adapter_pair_survives_a_failed_save(tmp_path, monkeypatch):
    model = _llama()
    lora.inject_lora(model)
    adapter = lora.save_adapter(model, tmp_path / "lora")
    with torch.no_grad():
        for m in lora.lora_modules(model).values():
            m.lora_B.fill_(1.0)  # 训练了一会儿：新的权重和已保存的不同
    import course_lib.lora
    monkeypatch.setattr(course_lib.lora, "atomic_write_json", _disk_full)
    with pytest.raises(OSError):
        lora.save_adapter(model, adapter)
    monkeypatch.undo()
    loaded = lora.load_adapter(_llama(), adapter)
    assert all(bool((m.lora_B == 0).all()) for m in lora.lora_modules(loaded).values())


# ---------------------------------------------------------------- 命令行：参数错误在做任何耗时的事之前报出，一行中文，退出码 2
def _one_line(err: str):
    assert "Traceback" not in err and CJK(err) and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, needle", [(["--max_steps", "-5"], "max_steps"), (["--lr", "-1"], "lr"),
                                          (["--block_size", "0"], "max_seq_len"), (["--dim", "130"], "整除"),
                                          (["--corpus", "wiki"], "不认识的语料")])
def test_train_cli_checks_settings_first(args, needle, tmp_path, capsys):
    from course_lib.cli.pretrain import main
    assert main(["--profile", "tiny", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert needle in err and not (tmp_path / "out").exists()


def test_train_cli_out_under_a_file(capsys):
    from course_lib.cli.pretrain import main
    assert main(["--profile", "tiny", "--out", str(ROOT / "README.md" / "sub")]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "README.md 是一个文件" in err


@pytest.mark.parametrize("args, needle", [(["--bogus", "1"], "不认识的参数"), (["--max_steps", "abc", "--out", "x"], "不是 int"),
                                          (["--max_steps", "5"], "--out"), (["--out", "", "--max_steps", "5"], "不能是空的"),
                                          (["--max_steps", "0", "--out", "x"], "max_steps"), (["foo"], "看不懂参数")])
def test_reference_cli_argument_errors(args, needle, capsys, monkeypatch):
    from course_lib.cli import reference
    monkeypatch.setattr(reference, "build_reference", lambda *a, **k: pytest.fail("不该开始训练"))
    assert reference.main(args) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert needle in err


def test_cli_interrupts_and_unexpected_errors(tmp_path, capsys, monkeypatch):
    from course_lib.cli import chat, pretrain

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    def broken(*_a, **_k):
        raise RuntimeError("sentencepiece 训练失败：语料太小\n常见原因：……")
    for work, code, needle in ((interrupt, 130, "重新运行同一条命令"), (broken, 1, "sentencepiece 训练失败")):
        monkeypatch.setattr(pretrain, "pretrain", work)
        assert pretrain.main(["--profile", "tiny", "--out", str(tmp_path / "out")]) == code
        err = capsys.readouterr().err
        _one_line(err)
        assert needle in err
    monkeypatch.setattr(chat, "load_chat_model", interrupt)
    assert chat.main([]) == 130
    assert "已取消" in capsys.readouterr().err


def test_start_cli_environment_errors(tmp_path, capsys, monkeypatch):
    from course_lib.cli import start
    monkeypatch.setenv("COURSE_DEVICE", "tpu")
    assert start.main(["--check"]) == 2
    _one_line(capsys.readouterr().err)
    monkeypatch.delenv("COURSE_DEVICE")
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "file"))
    assert start.main(["--check"]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert "是一个文件" in err


@pytest.mark.parametrize("args, needle", [(["notebooks/99_nope.ipynb"], "不存在"), (["README.md"], "不是 .ipynb"),
                                          (["--profile", "huge"], "不认识的 profile"), (["--timeout", "0"], "--timeout"),
                                          (["OUTSIDE"], "不在")])
def test_nbrun_checks_before_running_anything(args, needle, tmp_path, capsys, monkeypatch):
    from course_lib.cli import nbrun
    outside = tmp_path / "x.ipynb"
    outside.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(nbrun, "execute", lambda *a: pytest.fail("不该执行 notebook"))
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        nbrun.main([str(outside) if a == "OUTSIDE" else a for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert needle in err


def test_train_cli_end_to_end_is_one_line(tmp_path):
    """整条命令（而不是 main()）：参数错误只有一行中文，没有 traceback，几秒内就退出。"""
    r = subprocess.run([sys.executable, "-m", "course_lib.train", "--out", str(tmp_path / "o"), "--max_steps", "-5"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "COURSE_DATA_DIR": str(tmp_path / "data")})
    assert r.returncode == 2, r.stderr
    _one_line(r.stderr)
    assert not (tmp_path / "data").exists()  # 没有开始训练分词器、写 token 文件
