"""course_lib.webui：gradio 网页聊天。用 gradio_client 调两种后端（本进程的模型、course_lib.serve 的 OpenAI 服务器），
再用真的无头浏览器（Debian 的 chromium + selenium）打开网页、输入、按 Enter。回复都要和 ChatSession 贪心生成的逐字相同。"""
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import huggingface_hub.constants
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from servers import Running, free_port

from course_lib.chat import ChatSession
from course_lib.chat_format import DEFAULT_SYSTEM
from course_lib.cli.webui import main
from course_lib.webui import LocalBackend, ServerBackend, build_app, clean_history, launch

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "你是小雁。"
Q1, Q2 = "你是谁？", "「画蛇添足」是什么意思？"       # 有没有 Q1 这一轮历史，Q2 的贪心回复不一样
N = 48
GREEDY = dict(temperature=0.0, top_p=1.0, max_new_tokens=N, repetition_penalty=1.0)


def greedy_replies(model, tok, *questions, system=SYSTEM, **sampling):
    session = ChatSession(model, tok, system=system, **{**GREEDY, **sampling})
    return [session.chat(q) for q in questions]


def page_args(system=SYSTEM, temperature=0.0, top_p=1.0, max_new_tokens=N, repetition_penalty=1.0, seed=-1):
    """/chat 接口在消息之后的参数，顺序同网页左边的设置。"""
    return system, temperature, top_p, max_new_tokens, repetition_penalty, seed


# ---------------------------------------------------------------- 不联网：记下所有不是发往本机的连接
_outside = None


def _audit(event, args):
    if _outside is None or event not in ("socket.getaddrinfo", "socket.connect"):
        return
    host = args[0] if event == "socket.getaddrinfo" else args[1]
    host = host[0] if isinstance(host, tuple) else host if event == "socket.getaddrinfo" else None
    if isinstance(host, bytes):
        host = host.decode()
    if host is not None and host not in ("127.0.0.1", "localhost", "::1"):
        _outside.append((event, host))


sys.addaudithook(_audit)


@pytest.fixture
def outside(monkeypatch):
    """测试期间不是发往本机的网络请求（应该一个都没有）。gradio_client.Client 自己会问 huggingface.co
    （huggingface_hub 的 agent 注册表和统计）：那不是网页的事，测试里把 Hub 设成离线。"""
    global _outside
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    _outside = []
    yield _outside
    _outside = None


@pytest.fixture(scope="module")
def chat():
    return LocalBackend.load("chat")


@pytest.fixture(scope="module")
def local_page(chat):
    with launch(build_app(chat), port=free_port()) as page:
        yield page


# ---------------------------------------------------------------- 单元测试：历史、系统提示、种子
def test_clean_history_turns_gradio_messages_into_plain_turns():
    part = lambda text: {"type": "text", "text": text}                            # noqa: E731
    history = [
        {"role": "assistant", "content": "欢迎！"},                                # 开头的欢迎语：丢掉
        {"role": "user", "content": [part("你好")], "metadata": None, "options": None},
        {"role": "assistant", "content": [part("你好！"), part("有什么事？")], "metadata": {"title": None}},
        {"role": "system", "content": "别的系统提示"},                              # 系统提示来自网页上的框：丢掉
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/a.png"}}, part("看图")]},
        {"role": "assistant", "content": "图里"},
        {"role": "assistant", "content": "是一只猫。"},                             # 一条回复拆成两个气泡：合并
        {"role": "user", "content": "没有得到回复的问题"},                           # 出错或被停止：丢掉
        {"role": "user", "content": "第三个问题"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "最后一条没有回复"},
    ]
    assert clean_history(history) == [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么事？"},
        {"role": "user", "content": "看图"}, {"role": "assistant", "content": "图里\n是一只猫。"},
        {"role": "user", "content": "第三个问题"}, {"role": "assistant", "content": ""}]
    assert clean_history([]) == clean_history(None) == []
    assert clean_history([{"role": "user", "content": "x"}]) == []


def test_local_backend_continues_the_conversation_like_chat_session(chat):
    model, tok = chat.model, chat.tokenizer
    a1, a2 = greedy_replies(model, tok, Q1, Q2)
    history = [{"role": "user", "content": Q1}, {"role": "assistant", "content": a1}]
    assert "".join(chat.stream(Q2, history, system=SYSTEM, **GREEDY)) == a2
    assert "".join(chat.stream(Q2, [], system=SYSTEM, **GREEDY)) == greedy_replies(model, tok, Q2)[0] != a2   # 清空之后
    # 系统提示："" 表示不用
    no_system = "".join(chat.stream("你好，你是谁？", [], system="", **GREEDY))
    assert no_system == greedy_replies(model, tok, "你好，你是谁？", system=None)[0]
    assert no_system != "".join(chat.stream("你好，你是谁？", [], system=SYSTEM, **GREEDY))
    # 固定 seed 时第 n 条回复用 seed + n：接着网页上的历史，和一直开着的 ChatSession 一样
    sampled = dict(temperature=1.0, top_p=1.0, seed=7)
    s1, s2 = greedy_replies(model, tok, Q1, Q2, **sampled)
    again = [{"role": "user", "content": Q1}, {"role": "assistant", "content": s1}]
    assert "".join(chat.stream(Q2, again, system=SYSTEM, **{**GREEDY, **sampled})) == s2
    assert chat.info["参数量"].startswith(f"{model.num_params():,}") and chat.info["上下文窗口"] == "256 个 token"
    assert chat.info["来源"].startswith("assets/chat_model")
    with pytest.raises(ValueError, match="top_p"):
        chat.stream(Q1, [], top_p=0.0)


# ---------------------------------------------------------------- gradio_client：本进程的模型
def test_local_page_streams_the_greedy_reply_keeps_history_and_resets(chat, local_page, outside):
    model, tok = chat.model, chat.tokenizer
    a1, a2 = greedy_replies(model, tok, Q1, Q2)
    client = Client(local_page.url, verbose=False)
    assert client.predict(Q1, *page_args(), api_name="/chat") == a1
    partial = list(client.submit(Q2, *page_args(), api_name="/chat"))       # 同一个 Client：接着上一轮
    assert partial[-1] == a2 and len(set(partial)) >= 3                      # 流式：文字一段一段地变长
    assert all(b.startswith(a) for a, b in zip(partial, partial[1:]))
    assert client.predict(api_name="/reset") == []
    assert client.predict(Q2, *page_args(), api_name="/chat") == greedy_replies(model, tok, Q2)[0] != a2
    with pytest.raises(AppError, match="用户消息是空的"):
        client.predict("   ", *page_args(), api_name="/chat")
    assert outside == []


# ---------------------------------------------------------------- gradio_client：course_lib.serve 的 OpenAI 服务器
def test_server_backend_gives_the_same_replies(chat, outside):
    from course_lib.serve import create_app
    model, tok = chat.model, chat.tokenizer
    with Running(create_app(model, tok, "chat"), free_port()) as server:
        backend = ServerBackend(server.url)
        assert backend.model == "chat" and backend.context_length == 256 and server.url in backend.info["来源"]
        with launch(build_app(backend), port=free_port()) as page:
            client = Client(page.url, verbose=False)
            a1, a2 = greedy_replies(model, tok, Q1, Q2)
            assert client.predict(Q1, *page_args(), api_name="/chat") == a1
            partial = list(client.submit(Q2, *page_args(), api_name="/chat"))
            assert partial[-1] == a2 and len(set(partial)) >= 3
            with pytest.raises(AppError, match="重复惩罚"):
                client.predict(Q1, *page_args(repetition_penalty=1.1), api_name="/chat")
        # 固定 seed 的采样：服务器的第 n 条回复也用 seed + n
        sampled = dict(temperature=1.0, top_p=1.0, seed=7)
        s1, s2 = greedy_replies(model, tok, Q1, Q2, **sampled)
        history = [{"role": "user", "content": Q1}, {"role": "assistant", "content": s1}]
        assert "".join(backend.stream(Q2, history, system=SYSTEM, **{**GREEDY, **sampled})) == s2
        with pytest.raises(ValueError, match="/v1"):
            ServerBackend(server.url.removesuffix("/v1"))
        with pytest.raises(ValueError, match="上下文窗口"):                    # 太长：服务器的 400 变成中文错误
            list(backend.stream("长" * 400, [], system=None))
    with pytest.raises(ConnectionError, match="连不上服务器"):
        ServerBackend(server.url)                                            # 服务器已经停了
    for bad in ("127.0.0.1:8000/v1", "ftp://x/v1", "", None):
        with pytest.raises(ValueError, match="http://127.0.0.1:8000/v1"):
            ServerBackend(bad)
    assert outside == []


# ---------------------------------------------------------------- 真的浏览器
def _screenshot_script():
    spec = importlib.util.spec_from_file_location("webui_screenshot", ROOT / "scripts" / "webui_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_browser_types_a_message_and_gets_the_streamed_reply(chat, local_page, tmp_path):
    shot = _screenshot_script()
    reason = shot.missing()
    if reason and os.environ.get("CI"):                # CI 一定装了 chromium：缺了就是出错，不能悄悄跳过
        pytest.fail(f"CI 上必须能跑浏览器测试：{reason}")
    if reason:
        pytest.skip(f"没有浏览器，跳过网页测试：{reason}")
    driver = shot.open_browser(tmp_path / "chromium")
    try:
        shot.open_page(driver, local_page.url)
        shot.set_number(driver, "温度（temperature）", 0)
        shot.set_number(driver, "重复惩罚（repetition penalty）", 1)
        want = greedy_replies(chat.model, chat.tokenizer, Q1, Q2, system=DEFAULT_SYSTEM, max_new_tokens=128, top_p=0.9)
        assert [shot.send(driver, Q1), shot.send(driver, Q2)] == want
        assert shot.external_requests(driver, local_page.url) == []          # 字体、脚本都来自本机
    finally:
        driver.quit()


# ---------------------------------------------------------------- 命令行
def test_cli_errors_are_one_chinese_line(tmp_path, capsys):
    port = free_port()
    cases = (["--model", "chat", "--server", "http://127.0.0.1:1/v1"], ["--model", str(tmp_path / "nope")],
             ["--server", "localhost:8000"], ["--server", f"http://127.0.0.1:{port}/v1"], ["--model", "chat", "--port", "0"])
    for argv, message in zip(cases, ("只能给一个", "找不到模型文件夹", "http://", "连不上服务器", "--port")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("错误：") and message in err and "Traceback" not in err, err
    with socket.socket() as busy:                       # 端口被占用
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(OSError, match="端口可能已被占用"):
            launch(_tiny_app(), port=port)


def _tiny_app():
    import gradio as gr
    with gr.Blocks() as app:
        gr.Markdown("空")
    return app


def test_cli_serves_the_page_and_stops_on_ctrl_c():
    port = free_port()
    # 在后台运行的 pytest（bash 脚本里用 & 启动时）会让子进程继承「忽略 SIGINT」：先恢复默认，Ctrl-C 才有效
    proc = subprocess.Popen([sys.executable, "-m", "course_lib.webui", "--model", "chat", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, out = time.time() + 90, ""
        while "Ctrl-C" not in out:                     # 网页开好之后才打印地址
            assert proc.poll() is None and time.time() < deadline, out + (proc.stdout.read() or "超时")
            if select.select([proc.stdout], [], [], 0.5)[0]:
                out += proc.stdout.readline()
        assert f"在浏览器里打开 http://127.0.0.1:{port}/" in out, out
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        out += proc.stdout.read()
        assert "Traceback" not in out and "已取消" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
