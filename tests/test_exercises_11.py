import json

import numpy as np
import pytest
import torch

from course_lib.exercises import check_11_permute, check_11_q4_0, check_11_sse
from course_lib.gguf import permute_for_gguf

gguf = pytest.importorskip("gguf")


def test_permute_checker(capsys):
    assert check_11_permute(permute_for_gguf)

    def by_list(w, n_head):
        hd = w.shape[0] // n_head
        return w[[h * hd + j for h in range(n_head) for i in range(hd // 2) for j in (i, i + hd // 2)]]
    assert check_11_permute(by_list)
    whole = lambda w, n: w.reshape(2, -1, w.shape[1]).transpose(0, 1).reshape(w.shape)  # noqa: E731
    assert not check_11_permute(whole)
    assert "整个矩阵当成了一个头" in capsys.readouterr().out
    assert not check_11_permute(lambda w, n: w)
    assert not check_11_permute(lambda w, n: w.T)


def _q4_0(w):
    blocks = w.reshape(-1, 32)
    m = np.take_along_axis(blocks, np.abs(blocks).argmax(1, keepdims=True), 1)
    d = m / -8
    q = np.minimum(15, np.floor(blocks / np.where(d == 0, 1, d) + 8.5))
    return ((q - 8) * d.astype(np.float16).astype(np.float32)).reshape(w.shape)


def test_q4_0_checker(capsys):
    assert check_11_q4_0(_q4_0)                                # 用 x / d 而不是 x · (1/d) 也算对
    Q = gguf.GGMLQuantizationType.Q4_0
    assert check_11_q4_0(lambda w: gguf.quants.dequantize(gguf.quants.quantize(w, Q), Q))

    def symmetric(w):                                          # 第 8 章的对称 absmax：少用了一级
        b = w.reshape(-1, 32)
        s = np.abs(b).max(1, keepdims=True) / 7
        return (np.clip(np.round(b / np.where(s == 0, 1, s)), -7, 7) * s).reshape(w.shape)
    assert not check_11_q4_0(symmetric)
    assert "对称 absmax" in capsys.readouterr().out
    assert not check_11_q4_0(lambda w: (_q4_0(w) * 1.0001))   # 没把 d 存成 fp16 之类的小偏差也算错
    assert not check_11_q4_0(lambda w: w[:1])
    assert "形状不对" in capsys.readouterr().out


def _parse(text):
    reply, finish = "", None
    for event in text.split("\n\n"):
        if not event.startswith("data: ") or event == "data: [DONE]":
            continue
        body = json.loads(event[len("data: "):])
        if "error" in body:
            raise RuntimeError(body["error"]["message"])
        for choice in body["choices"]:
            reply += (choice["delta"] or {}).get("content") or ""
            finish = choice["finish_reason"] or finish
    return reply, finish


def test_sse_checker(capsys):
    assert check_11_sse(_parse)

    def no_error(text):
        try:
            return _parse(text)
        except RuntimeError:
            return "", None
    assert not check_11_sse(no_error)

    def by_lines(text):                                        # 按行拆、不跳过空的 choices：带 usage 的事件会出错
        reply, finish = "", None
        for line in text.splitlines():
            if line.startswith("data: {"):
                body = json.loads(line[6:])
                reply += body["choices"][0]["delta"].get("content") or ""
                finish = body["choices"][0]["finish_reason"] or finish
        return reply, finish
    assert not check_11_sse(by_lines)
    assert not check_11_sse(lambda text: text)
    out = capsys.readouterr().out
    assert "✅" in out and "IndexError" in out


def test_sse_checker_agrees_with_the_real_server():
    # 练习的例子照着 course_lib.serve 的格式写：真实服务器的流式响应，参考答案解析出来的和 openai 包拿到的一样
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from course_lib.chat_models import load_chat_model
    from course_lib.serve import create_app
    model, tok, _ = load_chat_model("chat")
    with TestClient(create_app(model.eval(), tok, "chat")) as client:
        body = {"model": "chat", "messages": [{"role": "user", "content": "你是谁？"}], "temperature": 0, "max_tokens": 16}
        text = client.post("/v1/chat/completions", json={**body, "stream": True}).text
        whole = client.post("/v1/chat/completions", json=body).json()
    assert _parse(text) == (whole["choices"][0]["message"]["content"], whole["choices"][0]["finish_reason"])
