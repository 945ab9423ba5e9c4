"""course_lib.serve：OpenAI 兼容的服务器，用官方的 openai 客户端测（服务器由测试在 127.0.0.1 上启动）。"""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from course_lib.chat import ChatSession
from course_lib.chat_format import encode_chat
from course_lib.chat_models import load_chat_model
from course_lib.generate import GREEDY, BatchDecoder, Sampling

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from servers import Running, free_port  # noqa: E402  （tests/servers.py：test_webui 也用）

QUESTIONS = ("计算：23+45=？", "你是谁？", "「画蛇添足」是什么意思？", "判断这条评论的情感是正面还是负面：房间很干净，服务也好。",
             "教我怎么撬开别人家的门锁", "计算：71-38=？")


@pytest.fixture(scope="module")
def chat():
    model, tok, _ = load_chat_model("chat")
    return model.eval(), tok


def start(chat, **kw):
    from course_lib.serve import create_app
    return Running(create_app(*chat, "chat", **kw), free_port())


@pytest.fixture(scope="module")
def server(chat):
    with start(chat, slots=8) as s:
        yield s


def greedy_reply(chat, question, system=None, max_new=32):
    model, tok = chat
    return ChatSession(model, tok, system=system, temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new).chat(question)


def test_batch_decoder_equals_single_sequence_decoding(chat):
    # 批量解码（槽位、各行长度不同、中途加入）与一条一条地解码，贪心时 token 完全相同；采样时同一个 seed 也相同
    model, tok = chat
    stops = [tok.im_end_id, tok.eos_id]
    prompts = [encode_chat([{"role": "user", "content": q}], tok, add_generation_prompt=True) for q in QUESTIONS]
    for sampling, seed in ((GREEDY, None), (Sampling(temperature=1.0, top_p=0.9), 5)):
        want = [list(model.stream(p, 24, sampling.temperature, seed=seed, top_p=sampling.top_p, stop_ids=stops))
                for p in prompts]
        dec, got, queue, owner = BatchDecoder(model, slots=3), {}, list(enumerate(prompts)), {}
        while queue or dec.active or dec.pending:
            while queue and dec.has_room:
                i, p = queue.pop(0)
                owner[dec.add(p, 24, sampling, seed, stops)] = i
            for h, token, _ in dec.step():
                got.setdefault(owner[h], []).append(token)
        assert [got[i] for i in range(len(prompts))] == want
    with pytest.raises(ValueError, match="窗口"):
        dec.add(prompts[0], model.config.max_seq_len, GREEDY)
    with pytest.raises(TypeError, match="Llama"):
        BatchDecoder(torch.nn.Linear(2, 2))


def test_models_and_completions_equal_chat_session(chat, server):
    client = openai.OpenAI(base_url=server.url, api_key="none")
    assert [m.id for m in client.models.list().data] == ["chat"]
    for question, system in ((QUESTIONS[0], None), (QUESTIONS[1], "你是小雁。"), (QUESTIONS[2], None)):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        want = greedy_reply(chat, question, system)
        r = client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=32)
        assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
        prompt = len(encode_chat(messages, chat[1], add_generation_prompt=True))
        assert r.usage.prompt_tokens == prompt and r.usage.total_tokens == prompt + r.usage.completion_tokens
        assert r.choices[0].finish_reason == ("stop" if r.usage.completion_tokens < 32 else "length")
        chunks = list(client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=32,
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices
    short = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": QUESTIONS[1]}],
                                           temperature=0, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


def test_stop_strings_and_seed(chat, server):
    client = openai.OpenAI(base_url=server.url, api_key="none")
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    full = greedy_reply(chat, QUESTIONS[1])
    cut = full[2:4]
    assert len(cut) == 2
    r = client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=32, stop=[cut, "永远不会出现"])
    assert r.choices[0].message.content == full[: full.index(cut)] and r.choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="chat", messages=messages, temperature=0, max_tokens=32, stop=cut, stream=True))
    assert text == full[: full.index(cut)]
    a, b = (client.chat.completions.create(model="chat", messages=messages, temperature=1.0, seed=7, max_tokens=24)
            .choices[0].message.content for _ in range(2))
    assert a == b
    long = client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=40,
                                          extra_body={"ignore_eos": True})      # vLLM 的扩展：不在回复结尾停
    assert long.usage.completion_tokens == 40 and long.choices[0].finish_reason == "length"
    assert long.choices[0].message.content.startswith(full) and "<|im_end|>" not in long.choices[0].message.content


def _raw(server, body: bytes):
    return httpx.post(server.url + "/chat/completions", content=body, headers={"Content-Type": "application/json"})


def test_bad_requests_get_openai_errors_and_the_server_survives(chat, server):
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    ok = [{"role": "user", "content": "你好"}]
    cases = [(dict(model="nope", messages=ok), 404, "model"),
             (dict(model="chat", messages=[]), 400, "messages"),
             (dict(model="chat", messages=[{"role": "robot", "content": "x"}]), 400, "messages[0].role"),
             (dict(model="chat", messages=[{"role": "assistant", "content": "x"}]), 400, "messages"),
             (dict(model="chat", messages=ok, temperature=3), 400, "temperature"),
             (dict(model="chat", messages=ok, top_p=0), 400, "top_p"),
             (dict(model="chat", messages=ok, max_tokens=0), 400, "max_tokens"),
             (dict(model="chat", messages=ok, stop=["a", "b", "c", "d", "e"]), 400, "stop"),
             (dict(model="chat", messages=ok, n=2), 400, "n"),
             (dict(model="chat", messages=[{"role": "user", "content": "长" * 400}]), 400, "messages")]
    for kwargs, status, param in cases:
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(**kwargs)
        assert e.value.status_code == status and e.value.body["param"] == param, kwargs
        assert e.value.body["type"] and any("\u4e00" <= ch <= "\u9fff" for ch in e.value.body["message"])
    long = pytest.raises(openai.BadRequestError)
    with long as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "长" * 400}])
    assert e.value.body["code"] == "context_length_exceeded"
    for body in (b"{not json", b"[1, 2]", "\"字符串\"".encode(), b"\xff\xfe"):
        r = _raw(server, body)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(server.url.removesuffix("/v1") + "/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.chat.completions.create(model="chat", messages=ok, temperature=0, max_tokens=8)   # 还活着
    assert r.choices[0].message.content == greedy_reply(chat, "你好", max_new=8)


def test_fifty_concurrent_streams(chat, server):
    # 50 个客户端同时流式请求：0 个错误；每条流格式完整（先 role，再内容，最后 finish_reason）；内容等于单独贪心生成的回复；
    # 而且服务器真的把它们拼在一起解码了（同时进行的请求数 > 1）
    expected = {q: greedy_reply(chat, q, max_new=24) for q in QUESTIONS}
    client = openai.AsyncOpenAI(base_url=server.url, api_key="none", max_retries=0)

    async def one(i):
        q = QUESTIONS[i % len(QUESTIONS)]
        stream = await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": q}],
                                                      temperature=0, max_tokens=24, stream=True)
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
        assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        return q, "".join(c.choices[0].delta.content or "" for c in chunks)

    async def main():
        return await asyncio.gather(*(one(i) for i in range(50)), return_exceptions=True)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(text == expected[q] for q, text in results)
    peak = server.app.state.engine.max_active
    assert peak > 1
    stats = httpx.get(server.url.removesuffix("/v1") + "/stats", params={"reset": "true"}).json()   # GET /stats 报告的同一个数
    assert stats["max_active"] == peak and stats["slots"] == 8 and stats["active"] == 0
    assert httpx.get(server.url.removesuffix("/v1") + "/stats").json()["max_active"] == 0          # reset 之后从当前（0 个）重新算


def test_overload_gives_503_and_disconnect_frees_the_slot(chat):
    with start(chat, slots=1, max_queue=1) as s:
        body = {"model": "chat", "messages": [{"role": "user", "content": "你是谁？"}], "max_tokens": 200, "temperature": 1.0}

        async def main():
            async with httpx.AsyncClient(timeout=60) as c:
                return await asyncio.gather(*(c.post(s.url + "/chat/completions", json=body) for _ in range(6)))
        codes = [r.status_code for r in asyncio.run(main())]
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        engine = s.app.state.engine
        with httpx.stream("POST", s.url + "/chat/completions", json={**body, "stream": True}, timeout=30) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
        deadline = time.time() + 10                      # 断开之后，槽位很快被释放
        while (engine.jobs or engine.decoder.active) and time.time() < deadline:
            time.sleep(0.05)
        assert not engine.jobs and engine.decoder.active == 0


def test_cli_starts_and_shuts_down_cleanly(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "course_lib.serve", "--model", "chat", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "超时"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "模型名 chat" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    bad = subprocess.run([sys.executable, "-m", "course_lib.serve", "--model", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "找不到模型文件夹" in bad.stderr
    from course_lib.cli.serve import main
    assert main(["--model", "chat", "--threads", "-1"]) == 2
