"""第 11 章：网页聊天——用 gradio 做一个和课程模型对话的网页：流式回复、系统提示、采样滑块、清空对话、模型信息。

    python -m course_lib.webui --model chat                        # 本进程里的模型（course_lib.chat.ChatSession）
    python -m course_lib.webui --server http://127.0.0.1:8000/v1   # 连 python -m course_lib.serve 开的服务器

    from course_lib.webui import LocalBackend, build_app, launch
    page = launch(build_app(LocalBackend.load("chat")))   # 不阻塞：在浏览器里打开 page.url
    page.close()

两种后端做同一件事：stream(消息, 历史, 设置…) 一段一段地给出回复。
- LocalBackend：每个请求新建一个 ChatSession（模板、上下文窗口、停止 token、流式解码都归它管，这里一样也不重写），
  把网页传来的历史放进 session.history，再 session.stream(消息)。
- ServerBackend：用官方的 openai 客户端（stream=True）请求 OpenAI 兼容的服务器；模型名来自 GET /v1/models。
gradio 每次都把整段对话历史传过来（几个浏览器标签页 = 几个用户，各有各的历史），所以后端自己不记历史。

程序化调用：gradio_client.Client(page.url).predict(消息, 系统提示, 温度, top_p, 最多 token 数, 重复惩罚, 种子（-1 = 随机）,
api_name="/chat") 返回整条回复（submit(...) 则一段段地给出变长的文字）；同一个 Client 的几次调用是一段多轮对话，
predict(api_name="/reset") 清空它。
一切只在本机：不开分享链接、不发统计、不从网上加载任何东西，默认只监听 127.0.0.1。
"""
from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"   # 必须在 import gradio 之前：不向 gradio 的服务器发使用统计
import gradio as gr  # noqa: E402

from .chat import ChatSession, as_text  # noqa: E402
from .chat_format import DEFAULT_SYSTEM  # noqa: E402
from .chat_models import MODEL_ALIASES, load_chat_model, resolve_alias  # noqa: E402
from .cli import USER_ERRORS  # noqa: E402

# 滑块的初始值就是 ChatSession 的默认值（temperature、top_p、repetition_penalty、max_new_tokens）
DEFAULTS = {k: p.default for k, p in inspect.signature(ChatSession).parameters.items()}


def count_text(n: int) -> str:
    """参数量的写法：3,590,592（约 359 万）。"""
    return f"{n:,}（约 {n / 1e8:.1f} 亿）" if n >= 1e8 else f"{n:,}（约 {n / 1e4:.0f} 万）"


# ---------------------------------------------------------------- gradio 的历史 → 纯文字的对话
def _text(content) -> str:
    """一条消息的内容 → 字符串。gradio 6 里可能是字符串，也可能是片段的列表 [{"type": "text", "text": …}, …]；
    文件、图片等不是文字的片段丢掉。"""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content["text"] if isinstance(content.get("text"), str) else ""
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return ""


def clean_history(history) -> list[dict]:
    """gradio 的对话历史（messages 格式）→ [{"role": "user" / "assistant", "content": 字符串}, …]，
    user 与 assistant 严格交替、从 user 开始、以 assistant 结束（ChatSession.history 和 OpenAI 接口要的样子）。

    - 内容是片段列表时只取文字；metadata、options 等别的键丢掉；
    - 没有得到回复的 user 消息（生成前就出错，或刚开始就按了停止）丢掉；
    - 连着的几条 assistant 消息（一条回复被拆成几个气泡）合成一条；
    - system 消息丢掉（系统提示来自网页上的「系统提示」框），开头的 assistant 消息（欢迎语）也丢掉。
    """
    out: list[dict] = []
    for m in history or []:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        text = _text(m.get("content") if isinstance(m, dict) else getattr(m, "content", None))
        if role == "user":
            if out and out[-1]["role"] == "user":
                out.pop()
            out.append({"role": "user", "content": text})
        elif role == "assistant" and out:
            if out[-1]["role"] == "assistant":
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "assistant", "content": text})
    if out and out[-1]["role"] == "user":
        out.pop()
    return out


# ---------------------------------------------------------------- 两种后端
class LocalBackend:
    """本进程里的模型：每个请求新建一个 ChatSession，历史来自网页。

    model, tokenizer, description 就是 load_chat_model(路径) 的返回值；source 是网页上「来源」一栏（默认：本进程）。
    """

    concurrency = 1                 # 一个模型一次只生成一条回复：别的标签页的请求排队
    has_repetition_penalty = True   # 支持重复惩罚

    def __init__(self, model, tokenizer, description: str = "本地模型", source: str | None = None):
        session = ChatSession(model, tokenizer)   # 模型和分词器不配套时，这里就给出中文错误
        self.model, self.tokenizer = model, tokenizer
        self.context_length = session.context_length
        self.info = {"模型": description,
                     "参数量": count_text(sum(p.numel() for p in model.parameters())),
                     "上下文窗口": f"{self.context_length} 个 token",
                     "来源": source or "本进程里的模型（course_lib.chat.ChatSession）"}

    @classmethod
    def load(cls, path: str | None = None, device: str = "cpu") -> LocalBackend:
        """用 load_chat_model(path) 读模型：文件夹、简称 chat / aligned，或 None（第 06 章的 SFT 模型）。"""
        model, tokenizer, description = load_chat_model(path, device=device)
        where = "课程默认的模型" if path is None else MODEL_ALIASES[path][0] if resolve_alias(path) else str(path)
        return cls(model, tokenizer, description, source=f"{where}（在本进程里运行）")

    def stream(self, message, history: list[dict], system: str | None = DEFAULT_SYSTEM, **sampling) -> Iterator[str]:
        """接着 history（clean_history 的格式）回复 message，返回回复的文字片段。
        sampling：temperature、top_p、max_new_tokens、repetition_penalty、seed，与 ChatSession 同名同义，没给的用它的默认值。"""
        session = ChatSession(self.model, self.tokenizer, system=system or None, **sampling)
        session.history = [dict(m) for m in history]
        session.turns = len(history) // 2       # seed 固定时第 n 条回复用 seed + n：与一直开着的 ChatSession 相同
        return session.stream(message)


class ServerBackend:
    """OpenAI 兼容的服务器（python -m course_lib.serve，或任何 OpenAI 兼容的服务）。

    base_url 形如 http://127.0.0.1:8000/v1；model 默认是 GET /v1/models 列出的第一个。
    创建时就连一次服务器：连不上、地址不对时立刻给出中文错误。
    """

    concurrency = None              # 请求都交给服务器：它自己批量解码、排队（course_lib.serve 忙时回 503）
    has_repetition_penalty = False  # OpenAI 的接口没有这个参数

    def __init__(self, base_url: str, model: str | None = None, timeout: float = 60.0):
        import openai
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"服务器地址应该形如 http://127.0.0.1:8000/v1，收到 {base_url!r}。")
        self.base_url = base_url.rstrip("/")
        self.client = openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=timeout)
        try:
            models = self.client.models.list().data
        except openai.APIError as e:
            raise self._error(e) from None
        if not models:
            raise ValueError(f"{self.base_url}/models 没有列出任何模型。")
        entry = next((m for m in models if m.id == model), None) if model else models[0]
        if entry is None:
            raise ValueError(f"服务器上没有模型 {model!r}，只有：{', '.join(m.id for m in models)}。")
        self.model = entry.id
        self.context_length = getattr(entry, "context_length", None)   # course_lib.serve 会给；别的服务器未必
        self.info = {"模型": self.model, "参数量": "未知（OpenAI 的接口不提供）",
                     "上下文窗口": f"{self.context_length} 个 token" if self.context_length else "未知",
                     "来源": f"服务器 {self.base_url}（openai 客户端，流式）"}

    def _error(self, e) -> Exception:
        """openai 客户端的英文异常 → 能照着改的中文错误。"""
        import openai
        if isinstance(e, openai.APIConnectionError):
            return ConnectionError(f"连不上服务器 {self.base_url}：请先启动它（python -m course_lib.serve --model chat），"
                                   "并检查地址和端口。")
        if isinstance(e, openai.APIStatusError):
            detail = (e.body.get("message") if isinstance(e.body, dict) else None) or str(e)
            hint = "（服务器地址通常以 /v1 结尾）" if e.status_code == 404 and not self.base_url.endswith("/v1") else ""
            return ValueError(f"服务器拒绝了请求（HTTP {e.status_code}）：{detail}{hint}")
        return RuntimeError(f"服务器出错：{e}")

    def stream(self, message, history: list[dict], system: str | None = DEFAULT_SYSTEM,
               temperature: float = DEFAULTS["temperature"], top_p: float = DEFAULTS["top_p"],
               max_new_tokens: int = DEFAULTS["max_new_tokens"], repetition_penalty: float = 1.0,
               seed: int | None = None) -> Iterator[str]:
        """与 LocalBackend.stream 相同，只是由服务器生成；repetition_penalty 只能是 1.0。"""
        message = as_text(message, "用户消息")
        if repetition_penalty != 1.0:
            raise ValueError("OpenAI 的接口没有重复惩罚（repetition_penalty）这个参数：连服务器时只能用 1.0。")
        messages = ([{"role": "system", "content": system}] if system else []) + list(history) \
            + [{"role": "user", "content": message}]
        request = dict(model=self.model, messages=messages, temperature=temperature, top_p=top_p,
                       max_tokens=max_new_tokens, stream=True)
        if seed is not None:
            request["seed"] = seed + len(history) // 2      # 与 ChatSession 一样：第 n 条回复用 seed + n
        return self._pieces(request)

    def _pieces(self, request: dict) -> Iterator[str]:
        import openai
        try:
            with self.client.chat.completions.create(**request) as chunks:
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        except openai.APIError as e:
            raise self._error(e) from None


# ---------------------------------------------------------------- 网页
def build_app(backend, title: str = "和课程的小模型聊天") -> gr.Blocks:
    """网页：左边是模型信息和生成设置，右边是对话框。backend 是 LocalBackend 或 ServerBackend。"""
    info = "　·　".join(f"**{k}**：{v}" for k, v in backend.info.items())

    def respond(message, history, system, temperature, top_p, max_new_tokens, repetition_penalty, seed):
        text = ""
        try:
            pieces = backend.stream(message, clean_history(history), system=system, temperature=temperature,
                                    top_p=top_p, max_new_tokens=int(max_new_tokens),
                                    repetition_penalty=repetition_penalty,
                                    seed=None if seed is None or seed < 0 else int(seed))
            for piece in pieces:
                text += piece
                yield text
        except USER_ERRORS as e:
            raise gr.Error(str(e), print_exception=False) from None

    rep_help = "> 1 时压低出现过的 token，减少复读" if backend.has_repetition_penalty else "连服务器时不能调：OpenAI 的接口没有这个参数"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\n{info}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                system = gr.Textbox(DEFAULT_SYSTEM, label="系统提示（system prompt）", lines=2, info="清空表示不用系统提示")
                temperature = gr.Slider(0.0, 2.0, DEFAULTS["temperature"], step=0.05, label="温度（temperature）",
                                        info="0 = 贪心：每步取最可能的 token，回复固定")
                top_p = gr.Slider(0.05, 1.0, DEFAULTS["top_p"], step=0.05, label="top_p（1 = 不限）")
                max_new = gr.Slider(1, backend.context_length or 1024, DEFAULTS["max_new_tokens"], step=1,
                                    label="每条回复最多几个 token")
                repetition = gr.Slider(1.0, 2.0, DEFAULTS["repetition_penalty"] if backend.has_repetition_penalty else 1.0,
                                       step=0.05, label="重复惩罚（repetition penalty）", info=rep_help,
                                       interactive=backend.has_repetition_penalty)
                seed = gr.Number(-1, precision=0, minimum=-1, label="随机种子（seed）",
                                 info="-1 = 每次都随机；≥ 0 的整数 = 同样的对话得到同样的回复")
                reset = gr.Button("清空对话", variant="secondary")
            with gr.Column(scale=3):
                chat = gr.ChatInterface(
                    respond, api_name="chat", additional_inputs=[system, temperature, top_p, max_new, repetition, seed],
                    chatbot=gr.Chatbot(label="对话", height=480, placeholder="和模型说点什么吧。",
                                       buttons=["copy", "copy_all"]),     # 不要「分享」按钮：它会把对话传到网上
                    textbox=gr.Textbox(placeholder="输入消息，按 Enter 发送（Shift+Enter 换行）", show_label=False,
                                       submit_btn="发送", stop_btn="停止"),
                    fill_height=False, concurrency_limit=backend.concurrency)
        # 清空：网页上的对话框，和 ChatInterface 为 API 调用保存的历史（gradio_client 的 /chat 用它）
        reset.click(lambda: ([], []), None, [chat.chatbot, chat.chatbot_state], api_name="reset", queue=False)
    return app


class RunningApp:
    """launch() 的返回值：url 是网页地址，close() 停下服务器；也可以用 with。"""

    def __init__(self, app: gr.Blocks, url: str):
        self.app, self.url = app, url

    def close(self) -> None:
        self.app.close(verbose=False)

    def wait(self) -> None:
        """一直运行，直到 Ctrl-C（KeyboardInterrupt）：关掉服务器，再把 Ctrl-C 交给调用方。"""
        try:
            while True:
                time.sleep(0.5)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"RunningApp({self.url})"


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, block: bool = False) -> RunningApp:
    """在 host:port 上开网页（不开分享链接）；port=None 时用 7860 起第一个空闲的端口。
    block=False 立刻返回 RunningApp；block=True 一直运行到 Ctrl-C。"""
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False, inbrowser=False,
                   quiet=True, show_error=True, ssr_mode=False, mcp_server=False, pwa=False)
    except OSError:
        raise OSError(f"不能在 {host}:{port or '7860 起的端口'} 上开网页：端口可能已被占用。请换一个 --port 再试。") from None
    running = RunningApp(app, app.local_url)
    if block:
        running.wait()
    return running


if __name__ == "__main__":  # python -m course_lib.webui：命令行在 course_lib/cli/webui.py
    from course_lib.cli.webui import main
    raise SystemExit(main())
