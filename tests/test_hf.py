import io
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from safetensors.torch import save_file  # noqa: E402

from course_lib import GPT, GPTConfig, load_corpus, load_model, save_model  # noqa: E402
from course_lib.hf import export_hf, import_hf, sentencepiece_info  # noqa: E402
from course_lib.llama import Llama, LlamaConfig  # noqa: E402

CFG = dict(vocab_size=73, max_seq_len=48, dim=64, n_layers=2, n_heads=8, n_kv_heads=2, rope_theta=5000.0)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(**{**CFG, **overrides})).eval()
    with torch.no_grad():  # 让 RMSNorm 的权重不全是 1，导出时也要对得上
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_export_logits_match_transformers(tmp_path, tie):
    model = _model(tie_weights=tie)
    folder = export_hf(model, tmp_path / "hf", bos_id=1, eos_id=2)
    hf = _hf(folder)
    assert type(hf).__name__ == "LlamaForCausalLM"
    c = hf.config
    assert (c.num_key_value_heads, c.head_dim, c.intermediate_size) == (2, 8, model.config.hidden_dim)
    assert c.rope_parameters["rope_theta"] == 5000.0 and c.tie_word_embeddings == tie
    assert c.max_position_embeddings == 48 and c.rms_norm_eps == model.config.norm_eps
    assert (hf.generation_config.eos_token_id, hf.generation_config.pad_token_id) == (2, 2)
    x = torch.randint(73, (2, 40))
    with torch.no_grad():
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    assert diff <= 1e-4
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))


def test_greedy_generation_matches_transformers(tmp_path):
    model = _model()
    hf = _hf(export_hf(model, tmp_path / "hf", bos_id=1, eos_id=2))
    for prompt in ([[5, 6, 7]], [[9, 1, 30, 30, 4, 60]]):
        ours = model.generate(torch.tensor(prompt), 30, temperature=0, stop_ids=[2])
        theirs = hf.generate(torch.tensor(prompt), max_new_tokens=30, do_sample=False)
        assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("tie", [False, True])
def test_import_hf_round_trip(tmp_path, tie):
    model = _model(tie_weights=tie)
    again = import_hf(export_hf(model, tmp_path / "hf"))
    assert again.config == model.config
    assert (again.lm_head.weight is again.embed_tokens.weight) == tie
    x = torch.randint(73, (2, 20))
    assert torch.equal(model(x)[0], again(x)[0])
    half = import_hf(tmp_path / "hf", dtype=torch.bfloat16)
    assert half.embed_tokens.weight.dtype == torch.bfloat16
    assert (half(x)[0].float() - model(x)[0]).abs().max().item() < 0.1


def test_import_sharded_checkpoint(tmp_path):
    model = _model()
    folder = export_hf(model, tmp_path / "hf")
    tensors = {k: v.contiguous() for k, v in
               transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        save_file({n: tensors[n] for n in part}, folder / f"model-0000{i + 1}-of-00002.safetensors")
        weight_map.update({n: f"model-0000{i + 1}-of-00002.safetensors" for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    x = torch.randint(73, (1, 12))
    assert torch.equal(import_hf(folder)(x)[0], model(x)[0])


def test_import_errors(tmp_path):
    folder = export_hf(_model(), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    for change, message in [({"model_type": "qwen2"}, "只支持 Llama"),
                            ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_type"),
                            ({"attention_bias": True}, "attention_bias")]:
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            import_hf(folder)
    with pytest.raises(ValueError, match="load_model"):
        import_hf(save_model(_model(), tmp_path / "ours"))
    with pytest.raises(ValueError, match="import_hf"):
        load_model(export_hf(_model(), tmp_path / "hf2"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf(tmp_path / "nothing")
    with pytest.raises(TypeError, match="Llama"):
        export_hf(GPT(GPTConfig(vocab_size=10)), tmp_path / "gpt")


# ---------------------------------------------------------------- 分词器
COURSE_SP = dict(add_dummy_prefix=False, remove_extra_whitespaces=False, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                 user_defined_symbols=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"])


@pytest.fixture(scope="module")
def news_lines():
    lines = [line for line in load_corpus("news", "val").splitlines() if line.strip()]
    return lines[:300], lines[300:500]


def _train_sp(path, lines, **options):
    buffer = io.BytesIO()
    options = {"model_type": "bpe", "vocab_size": 2600, "byte_fallback": True, "character_coverage": 1.0,
               "normalization_rule_name": "identity", "minloglevel": 2, **options}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer, **options)
    path.write_bytes(buffer.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path))


@pytest.mark.parametrize("options,ids,expect", [
    ({}, {}, None),                                                      # sentencepiece 的缺省：<s> </s>
    (COURSE_SP, dict(bos_id=1, eos_id=1, pad_id=2), None),               # 课程分词器的设置，显式给 id
    (COURSE_SP, {}, dict(bos_id=1, eos_id=1, pad_id=2)),                 # 不给 id：按课程约定找到特殊 token
], ids=["sp-defaults", "course-tokenizer", "course-tokenizer-default-ids"])
def test_tokenizer_export_round_trip(tmp_path, news_lines, options, ids, expect):
    train, held_out = news_lines
    sp = _train_sp(tmp_path / "zh.model", train, **options)
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    model = _model(vocab_size=sp.get_piece_size())
    folder = export_hf(model, tmp_path / "hf", sp_model_path=tmp_path / "zh.model", chat_template=template, **ids)
    assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja"} <= \
        {p.name for p in folder.iterdir()}
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = expect or ids
    bos = ids.get("bos_id", sp.bos_id())
    assert (tok.bos_token_id, len(tok)) == (bos, sp.get_piece_size())
    extra = ["  两个空格  开头和中间 ", "\t制表\n换行"] if options else []  # 课程的设置连空格也一致
    for line in held_out + ["😀 表情，Emoji 与 GPU。"] + extra:
        ids_hf = tok(line)["input_ids"]
        assert ids_hf == [bos] + sp.encode(line)                       # 开头自动加 BOS
        assert tok.decode(ids_hf, skip_special_tokens=True) == sp.decode(sp.encode(line))
    config = json.loads((folder / "generation_config.json").read_text())
    assert config["bos_token_id"] == bos and config["eos_token_id"] == ids.get("eos_id", sp.eos_id())
    assert config["pad_token_id"] == ids.get("pad_id", config["eos_token_id"])
    chat = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False)
    assert chat == "<|im_start|>你好<|im_end|>"


def test_tokenizer_export_rejects_unconvertible_models(tmp_path, news_lines):
    train, _ = news_lines
    model = _model(vocab_size=2600)
    sp = _train_sp(tmp_path / "nfkc.model", train, normalization_rule_name="nmt_nfkc")
    assert sentencepiece_info(sp)["normalization"] == "nmt_nfkc"
    with pytest.raises(ValueError, match="identity"):
        export_hf(model, tmp_path / "a", sp_model_path=tmp_path / "nfkc.model")
    _train_sp(tmp_path / "uni.model", train, model_type="unigram")
    with pytest.raises(ValueError, match="bpe"):
        export_hf(model, tmp_path / "b", sp_model_path=tmp_path / "uni.model")
    with pytest.raises(ValueError, match="vocab_size"):
        export_hf(_model(), tmp_path / "c", sp_model_path=tmp_path / "nfkc.model")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # 不合格时什么都不写
