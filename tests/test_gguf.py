"""course_lib.gguf：导出的 GGUF 用两种互相独立的读法核对——transformers（gguf_file=）和 llama.cpp（llama-cpp-python）。"""
import copy

import pytest
import torch

from course_lib.chat import ChatSession
from course_lib.chat_format import CHAT_TEMPLATE, DEFAULT_SYSTEM, encode_chat, format_chat
from course_lib.chat_models import load_chat_model
from course_lib.gguf import (OLLAMA_TEMPLATE, export_gguf, modelfile_text, permute_for_gguf, quantized_copy, read_metadata,
                             write_modelfile)
from course_lib.gpt import GPT, GPTConfig
from course_lib.llama import apply_rope, rope_cos_sin

pytest.importorskip("gguf")

PROMPTS = ([{"role": "user", "content": "计算：23+45=？"}],
           [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": "你是谁？"}],
           [{"role": "user", "content": "判断这条评论的情感是正面还是负面：房间很干净，服务也好。"}],
           [{"role": "user", "content": "「画蛇添足」是什么意思？"}])


@pytest.fixture(scope="module")
def chat():
    model, tok, _ = load_chat_model("chat")
    return model.eval(), tok


@pytest.fixture(scope="module")
def perturbed(chat):
    # 参考对话模型的权重恰好都能用 fp16 精确表示（它以 fp16 发布），f16 会和 f32 逐位相同；
    # 每个权重乘 (1 + 1e-3·N(0,1)) 之后，才看得到 f16 真正的舍入误差
    model = copy.deepcopy(chat[0])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 1e-3 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def files(chat, perturbed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    _, tok = chat
    out = {q: export_gguf(chat[0], tok, folder / f"chat-{q}.gguf", q) for q in ("f32", "f16", "q8_0", "q4_0")}
    out["f16-perturbed"] = export_gguf(perturbed, tok, folder / "perturbed-f16.gguf", "f16")
    out["q8_0-perturbed"] = export_gguf(perturbed, tok, folder / "perturbed-q8_0.gguf", "q8_0")
    return out


def _ids(tok):
    return [encode_chat(m, tok, add_generation_prompt=True) for m in PROMPTS]


def test_permutation_turns_half_split_rope_into_adjacent_pairs():
    # 课程的 RoPE 把第 i 维和第 i + hd/2 维配对；llama.cpp 把 2i 与 2i+1 配对。重排后每个头的行是 [0, hd/2, 1, hd/2+1, …]，
    # 用「相邻配对」旋转重排过的 q，得到的正是课程旋转结果的交错排列——点积（注意力分数）因此完全相同
    torch.manual_seed(0)
    n_head, hd, dim, T = 3, 8, 12, 5
    w, x = torch.randn(n_head * hd, dim), torch.randn(T, dim)
    cos, sin = rope_cos_sin(hd, T)
    ours = apply_rope((x @ w.T).view(T, n_head, hd).transpose(0, 1), cos, sin).transpose(0, 1)   # (T, H, hd)
    interleaved = torch.stack([ours[..., : hd // 2], ours[..., hd // 2:]], -1).reshape(T, n_head, hd)
    q = (x @ permute_for_gguf(w, n_head).T).view(T, n_head, hd // 2, 2)
    c, s = cos[:, None, : hd // 2], sin[:, None, : hd // 2]
    adjacent = torch.stack([q[..., 0] * c - q[..., 1] * s, q[..., 0] * s + q[..., 1] * c], -1).reshape(T, n_head, hd)
    assert torch.allclose(adjacent, interleaved, atol=1e-5)
    with pytest.raises(ValueError, match="头"):
        permute_for_gguf(torch.zeros(10, 4), 3)


def test_metadata_tokenizer_and_template(chat, files):
    _, tok = chat
    meta = read_metadata(files["f16"])
    assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == chat[0].config.max_seq_len
    assert meta["tokenizer.ggml.add_space_prefix"] is False or meta["tokenizer.ggml.add_space_prefix"] == 0
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.eot_token_id"]) == (tok.bos_id, tok.eos_id, tok.im_end_id)
    tensors = meta["tensors"]
    assert "output.weight" not in tensors                     # 共享权重：llama.cpp 退回用 token_embd
    assert tensors["blk.0.attn_q.weight"] == ((192, 192), "F16") and tensors["blk.0.attn_norm.weight"][1] == "F32"
    assert read_metadata(files["q8_0"])["tensors"]["token_embd.weight"][1] == "Q8_0"
    assert read_metadata(files["q4_0"])["tensors"]["blk.0.ffn_up.weight"][1] == "Q4_0"
    sizes = {q: files[q].stat().st_size for q in ("f32", "f16", "q8_0", "q4_0")}
    assert sizes["q4_0"] < 0.6 * sizes["q8_0"] < 0.6 * sizes["f16"] < 0.6 * sizes["f32"]


def _hf(path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@torch.no_grad()
def _compare(ours, theirs, prompts):
    worst, agree, total = 0.0, 0, 0
    for ids in prompts:
        x = torch.tensor([ids])
        a, b = ours(x)[0], theirs(x).logits
        worst = max(worst, (a - b).abs().max().item())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += x.size(1)
    return worst, agree / total


def test_transformers_reads_the_gguf(chat, perturbed, files):
    model, tok = chat
    prompts = _ids(tok)
    worst, agree = _compare(model, _hf(files["f32"]), prompts)
    assert worst <= 1e-4 and agree == 1.0                      # 同样的 float32 权重，只差运算顺序的舍入
    worst, agree = _compare(perturbed, _hf(files["f16-perturbed"]), prompts)
    # fp16 的相对精度 2^-11 ≈ 4.9e-4；logits 的量级十几，经过 6 层累积的误差在 1e-2 以内（实测 ~3e-3）
    assert 0 < worst <= 2e-2 and agree >= 0.99
    worst, agree = _compare(perturbed, _hf(files["q8_0-perturbed"]), prompts)
    assert worst <= 0.5 and agree >= 0.9                       # 8 位量化：每块 32 个数共用一个缩放系数


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_quantized_copy_holds_what_the_file_holds(chat, perturbed, files, tmp_path, qtype):
    # quantized_copy 不经过文件算出「GGUF 里存的权重」：transformers 读真正的文件（它用 gguf 包反量化、把 q/k 排回来），
    # 两边的 logits 只差运算顺序的舍入——说明量化是按行分块的，q/k 的行重排不影响结果
    model, tok = chat
    path = export_gguf(perturbed, tok, tmp_path / f"p-{qtype}.gguf", qtype)
    worst, agree = _compare(quantized_copy(perturbed, qtype), _hf(path), _ids(tok))
    assert worst <= 1e-4 and agree == 1.0
    copy4 = quantized_copy(model, qtype)
    assert copy4 is not model and torch.equal(copy4.norm.weight, model.norm.weight)   # 一维的 RMSNorm 权重不量化
    assert torch.equal(model.layers[0].mlp.up_proj.weight, chat[0].layers[0].mlp.up_proj.weight)  # 原模型不变
    changed = not torch.equal(copy4.layers[0].mlp.up_proj.weight, model.layers[0].mlp.up_proj.weight)
    assert changed == (qtype != "f16")                         # 参考对话模型以 fp16 发布：f16 原样保留
    with pytest.raises(ValueError, match="q4_0"):
        quantized_copy(model, "q3")


def test_export_errors_and_atomic_write(chat, tmp_path, monkeypatch):
    import gguf
    model, tok = chat
    with pytest.raises(ValueError, match="f16"):
        export_gguf(model, tok, tmp_path / "x.gguf", "q2_k")
    with pytest.raises(ValueError, match=".gguf"):
        export_gguf(model, tok, tmp_path / "x.bin")
    with pytest.raises(TypeError, match="Llama"):
        export_gguf(GPT(GPTConfig(vocab_size=tok.vocab_size)), tok, tmp_path / "x.gguf")
    out = export_gguf(model, tok, tmp_path / "m.gguf", "q8_0")
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError("磁盘满了（测试）")
    monkeypatch.setattr(gguf.quants, "quantize", boom)
    with pytest.raises(OSError, match="磁盘满了"):
        export_gguf(model, tok, out, "q8_0")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    with pytest.raises(ValueError, match="GGUF"):
        (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
        read_metadata(tmp_path / "bad.gguf")


def _render_ollama(system, messages):
    # 手写 OLLAMA_TEMPLATE（Go 的 text/template）对一段对话的展开：{{ if .System }}…{{ end }}{{ range .Messages }}…{{ end }}
    head, rest = OLLAMA_TEMPLATE.split("{{ if .System }}")
    sys_part, rest = rest.split("{{ end }}", 1)
    loop, tail = rest.split("{{ range .Messages }}")[1].split("{{ end }}")
    text = head + (sys_part.replace("{{ .System }}", system) if system else "")
    for m in messages:
        text += loop.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
    return text + tail


def test_modelfile_matches_the_course_chat_format(chat, files, tmp_path):
    text = modelfile_text("m.gguf")
    assert "FROM ./m.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text and DEFAULT_SYSTEM in text
    for messages in PROMPTS:
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        rest = messages[1:] if system else list(messages)
        assert _render_ollama(system, rest) == "<|endoftext|>" + format_chat(messages, add_generation_prompt=True)
    mf = write_modelfile(files["q8_0"])
    assert mf.parent == files["q8_0"].parent and "PARAMETER num_ctx 256" in mf.read_text()
    with pytest.raises(FileNotFoundError, match="导出"):
        write_modelfile(tmp_path / "none.gguf")


def test_cli(tmp_path, capsys):
    from course_lib.cli.gguf import main
    assert main(["--model", "chat", "--out", str(tmp_path / "c.gguf"), "--type", "q8_0"]) == 0
    assert (tmp_path / "c.gguf").is_file() and (tmp_path / "Modelfile").is_file()
    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "d.gguf")]) == 2
    assert "找不到模型文件夹" in capsys.readouterr().err


# ---------------------------------------------------------------- llama.cpp（pip install -e '.[deploy]'）
@pytest.fixture(scope="module")
def llama_cpp(needed):
    return needed("llama_cpp", "pip install -e '.[deploy]'，从源码编译 llama-cpp-python")


def _llama(llama_cpp, path, logits_all=False):
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, logits_all=logits_all, verbose=False)


def test_llama_cpp_tokens_and_greedy_decoding(chat, files, llama_cpp):
    model, tok = chat
    prompts = _ids(tok)
    expected = [list(model.stream(ids, 24, temperature=0.0, stop_ids=[tok.im_end_id, tok.eos_id])) for ids in prompts]
    for q in ("f32", "f16"):
        llm = _llama(llama_cpp, files[q])
        try:
            text = "这家酒店的服务很好，房间也干净！"
            assert llm.tokenize(text.encode(), add_bos=False) == tok.encode(text)
            for ids, want in zip(prompts, expected):
                got = []
                for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                    got.append(t)
                    if t in (tok.im_end_id, tok.eos_id) or len(got) == len(want):
                        break
                assert got == want, q
        finally:
            llm.close()


def _top1_agreement(llama_cpp, path, model, prompts) -> float:
    import numpy as np
    llm = _llama(llama_cpp, path, logits_all=True)
    agree = total = 0
    try:
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            theirs = torch.from_numpy(np.array(llm.scores[: len(ids)]))
            with torch.no_grad():
                ours = model(torch.tensor([ids]))[0][0]
            agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            total += len(ids)
    finally:
        llm.close()
    return agree / total


def test_llama_cpp_q8_0_agrees_with_course_lib(chat, perturbed, files, llama_cpp):
    assert _top1_agreement(llama_cpp, files["q8_0-perturbed"], perturbed, _ids(chat[1])) >= 0.95


def test_llama_cpp_q4_0_computes_with_the_weights_quantized_copy_holds(chat, files, llama_cpp):
    # q4_0 离原模型远一些（第 11 章量出 bpc 的代价）；但 llama.cpp 算的正是 quantized_copy 里的那些权重
    model, tok = chat
    assert _top1_agreement(llama_cpp, files["q4_0"], quantized_copy(model, "q4_0"), _ids(tok)) >= 0.95


def test_llama_cpp_chat_completion_equals_chat_session(chat, files, llama_cpp):
    model, tok = chat
    llm = _llama(llama_cpp, files["f32"])
    try:
        session = ChatSession(model, tok, system=None, temperature=0.0, repetition_penalty=1.0, max_new_tokens=32)
        for messages in PROMPTS[:2]:
            session.reset()
            if messages[0]["role"] == "system":
                session = ChatSession(model, tok, system=messages[0]["content"], temperature=0.0,
                                      repetition_penalty=1.0, max_new_tokens=32)
            want = session.chat(messages[-1]["content"])
            got = llm.create_chat_completion(messages=list(messages), temperature=0.0, top_k=1, repeat_penalty=1.0,
                                             max_tokens=32)["choices"][0]["message"]["content"]
            assert got.strip() == want.strip()
    finally:
        llm.close()
