"""第 11 章：OpenAI 兼容的服务器——任何会调 OpenAI API 的程序（openai 包、LangChain、各种聊天前端）都能用课程的模型。

    python -m course_lib.serve --model aligned --host 127.0.0.1 --port 8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": "你好"}])

接口：GET /v1/models；POST /v1/chat/completions（stream 为 true 时按 OpenAI 的格式发 server-sent events：
先 {"role": "assistant"}，再一段段 content，最后带 finish_reason 的空 delta 和 data: [DONE]）。
参数：max_tokens（或 max_completion_tokens）、temperature、top_p、stop、seed、stream_options.include_usage，
以及 vLLM 的扩展参数 ignore_eos（openai 包里写 extra_body={"ignore_eos": True}：不在回复结尾停，测吞吐量用）。

并发：一个后台线程拥有模型和 BatchDecoder（generate.py），同时进行的请求每步拼成一批一起前向（连续批处理，
continuous batching）——不是一个接一个地排队。排队的请求超过 max_queue 时新请求得到 503；
格式不对的请求得到 400、不认识的模型 404，错误都是 OpenAI 的格式 {"error": {"message", "type", "param", "code"}}，
服务器本身不会因为一个坏请求而停下。
"""

import asyncio
import collections
import json
import threading
import time
import uuid

from .chat_format import encode_chat, validate_messages
from .generate import BatchDecoder, Sampling, StreamDecoder

ROLES = ("system", "user", "assistant")
MAX_STOP = 4                      # OpenAI 的 stop 最多 4 个字符串


class ApiError(Exception):
    """要以 OpenAI 的错误格式返回给客户端的错误。"""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- 请求检查
def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ApiError(400, f"{key} 应该是数字，收到 {value!r:.40}。", key)
    if value < low or value > high or (low_open and value == low):
        left = "(" if low_open else "["
        raise ApiError(400, f"{key} 应该在 {left}{low}, {high}] 之间，收到 {value}。", key)
    return float(value)


def _content(value, i: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                       for p in value):
        return "".join(p["text"] for p in value)          # OpenAI 的「内容片段」写法：[{"type": "text", "text": ...}]
    raise ApiError(400, f"messages[{i}].content 应该是字符串（或只含文字片段的列表），收到 {type(value).__name__}。",
                   f"messages[{i}].content")


def parse_request(body, model_name: str, tokenizer, window: int) -> dict:
    """检查 /v1/chat/completions 的请求体，返回解码需要的一切；不合格时抛出 ApiError（400 / 404）。"""
    if not isinstance(body, dict):
        raise ApiError(400, f"请求体应该是一个 JSON 对象，收到 {type(body).__name__}。")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "缺少 model：请写这个服务器的模型名（GET /v1/models 能查到）。", "model")
    if model != model_name:
        raise ApiError(404, f"这个服务器没有模型 {model!r:.60}，只有 {model_name!r}。", "model", "model_not_found")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages 应该是一个非空的列表：[{\"role\": \"user\", \"content\": \"你好\"}]。", "messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] 应该是 {{\"role\", \"content\"}} 对象，收到 {type(m).__name__}。", f"messages[{i}]")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role 应该是 {' / '.join(ROLES)} 之一，收到 {m.get('role')!r:.30}。",
                           f"messages[{i}].role")
        messages.append({"role": role, "content": _content(m.get("content"), i)})
    try:
        validate_messages(messages, add_generation_prompt=True)
    except (ValueError, TypeError) as e:
        raise ApiError(400, str(e), "messages") from None
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise ApiError(400, f"这个服务器每次只生成一条回复：n 只能是 1，收到 {n!r:.20}。", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ApiError(400, f"max_tokens 应该是 ≥ 1 的整数，收到 {max_tokens!r:.30}。", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOP
                             or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, f"stop 应该是一个非空字符串，或最多 {MAX_STOP} 个非空字符串的列表。", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"seed 应该是整数，收到 {seed!r:.30}。", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream 应该是 true 或 false，收到 {stream!r:.20}。", "stream")
    ignore_eos = body.get("ignore_eos", False)        # vLLM 的扩展参数：不在 <|im_end|> 处停，正好生成 max_tokens 个（测吞吐量用）
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, f"ignore_eos 应该是 true 或 false，收到 {ignore_eos!r:.20}。", "ignore_eos")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options 应该是对象，例如 {\"include_usage\": true}。", "stream_options")
    ids = encode_chat(messages, tokenizer, add_generation_prompt=True)
    if len(ids) >= window:
        raise ApiError(400, f"提示有 {len(ids)} 个 token，模型的上下文窗口只有 {window} 个：请缩短对话（比如去掉较早的几轮）。",
                       "messages", "context_length_exceeded")
    room = window - len(ids)
    return {"ids": ids, "max_new": min(max_tokens or room, room), "asked": max_tokens,
            "sampling": Sampling(temperature=temperature, top_p=None if top_p >= 1.0 else top_p),
            "seed": seed, "stop": stop or [], "stream": stream, "ignore_eos": ignore_eos, "include_usage": bool(options.get("include_usage"))}


# ---------------------------------------------------------------- 回复文字：流式解码 + stop 字符串
class ReplyText:
    """把 token 一个个变成要发出的文字：停止 token 不输出；出现 stop 字符串就在它之前截断；
    结尾可能是某个 stop 字符串开头的那几个字先扣住，确定不是才发出。"""

    def __init__(self, decode, stops: list[str]):
        self.decoder, self.stops = StreamDecoder(decode), stops
        self.text, self.sent, self.stopped = "", 0, False

    def _release(self, final: bool) -> str:
        for s in self.stops:
            i = self.text.find(s)
            if i >= 0:
                self.text, self.stopped, final = self.text[:i], True, True
        hold = 0
        if not final:
            for s in self.stops:
                hold = max(hold, next((k for k in range(min(len(s) - 1, len(self.text)), 0, -1)
                                       if self.text.endswith(s[:k])), 0))
        end = max(self.sent, len(self.text) - hold)
        piece, self.sent = self.text[self.sent:end], end
        return piece

    def push(self, token: int) -> str:
        self.text += self.decoder.push(token)
        return self._release(False)

    def finish(self) -> str:
        self.text += self.decoder.finish()
        return self._release(True)


# ---------------------------------------------------------------- 后台解码线程
class Job:
    def __init__(self, request: dict, loop: asyncio.AbstractEventLoop):
        self.request, self.loop = request, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.handle: int | None = None

    def deliver(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _put_all(items) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class Engine:
    """拥有模型的后台线程：排队的请求一有空槽位就加入 BatchDecoder，每一步所有进行中的请求一起前进一个 token。"""

    def __init__(self, model, tokenizer, slots: int = 8, max_queue: int = 64):
        self.decoder = BatchDecoder(model, slots=slots)
        self.stop_ids = [tokenizer.im_end_id, tokenizer.eos_id]
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.jobs: dict[int, Job] = {}
        self.wake = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.steps = 0
        self.max_active = 0            # 同时解码的请求最多有几个（测试和基准用它确认真的批量了）

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="course-lib-decoder", daemon=True)
        self.thread.start()

    def close(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout=10)
        for job in list(self.waiting) + list(self.jobs.values()):
            job.deliver(ApiError(503, "服务器正在关闭。", kind="server_error", code="shutting_down"))

    def submit(self, job: Job) -> None:
        with self.wake:
            if not self.running:
                raise ApiError(503, "服务器正在关闭。", kind="server_error", code="shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise ApiError(503, f"服务器太忙：已有 {len(self.waiting)} 个请求在排队（上限 {self.max_queue}），请稍后重试。",
                               kind="server_error", code="overloaded")
            self.waiting.append(job)
            self.wake.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self.wake:
            self.wake.notify()

    def _admit(self) -> None:
        dec = self.decoder
        while self.waiting and dec.has_room:
            job = self.waiting.popleft()
            if job.cancelled:
                continue
            r = job.request
            try:
                job.handle = dec.add(r["ids"], r["max_new"], r["sampling"], r["seed"],
                                     () if r["ignore_eos"] else self.stop_ids)
            except (ValueError, RuntimeError) as e:           # 检查过的请求不该到这里；万一到了，只影响这一个
                job.deliver(ApiError(400, str(e)))
                continue
            self.jobs[job.handle] = job

    def _loop(self) -> None:
        dec = self.decoder
        while True:
            with self.wake:
                while self.running and not self.waiting and not self.jobs:
                    self.wake.wait()
                if not self.running:
                    return
                for handle, job in list(self.jobs.items()):
                    if job.cancelled:
                        dec.remove(handle)
                        del self.jobs[handle]
                self._admit()
            try:
                self.max_active = max(self.max_active, dec.active)
                events = dec.step()
                self.steps += 1
            except Exception as e:  # noqa: BLE001 —— 解码出错：告诉这一批的客户端，线程继续服务后面的请求
                for handle, job in list(self.jobs.items()):
                    dec.remove(handle)
                    job.deliver(ApiError(500, f"生成时出错：{type(e).__name__}: {str(e)[:200]}", kind="server_error"))
                self.jobs.clear()
                dec.pending.clear()
                continue
            batches: dict[asyncio.AbstractEventLoop, list] = collections.defaultdict(list)
            for handle, token, done in events:
                job = self.jobs.get(handle)
                if job is None:
                    continue
                batches[job.loop].append((job.queue, (token, done)))
                if done:
                    del self.jobs[handle]
            for loop, items in batches.items():      # 一步的所有 token 一次交给事件循环：每步唤醒它一次，而不是每个请求一次
                loop.call_soon_threadsafe(_put_all, items)


# ---------------------------------------------------------------- FastAPI 应用
def create_app(model, tokenizer, model_name: str, slots: int = 8, max_queue: int = 64):
    """OpenAI 兼容的 FastAPI 应用；启动时开后台解码线程，关闭时停掉它。"""
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException
    except ImportError:
        raise ImportError("服务器需要 fastapi 和 uvicorn：pip install -e '.[deploy]'") from None
    window = model.config.max_seq_len
    created = int(time.time())
    engine = Engine(model, tokenizer, slots, max_queue)
    stop_ids = set(engine.stop_ids)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="course_lib OpenAI 兼容服务器", lifespan=lifespan)
    app.state.engine = engine

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(ApiError(exc.status_code, f"{request.method} {request.url.path}：{exc.detail}。"
                                               "这个服务器只有 GET /v1/models、POST /v1/chat/completions（和 GET /stats）。", kind=kind))

    @app.exception_handler(Exception)
    async def any_error(request, exc):
        return error(ApiError(500, f"服务器内部错误：{type(exc).__name__}: {str(exc)[:200]}", kind="server_error"))

    @app.get("/stats")
    async def stats(reset: bool = False):
        """不是 OpenAI 接口的一部分：解码器现在的状态（像 vLLM、llama.cpp 服务器的 /metrics），看请求是不是真的拼成了批。
        reset=true 时返回之后把 max_active 清成当前的 active（基准脚本用它分段统计）。"""
        out = {"slots": len(engine.decoder.free) + engine.decoder.active, "active": engine.decoder.active,
               "waiting": len(engine.waiting), "steps": engine.steps, "max_active": engine.max_active}
        if reset:
            engine.max_active = engine.decoder.active
        return out

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "course_lib", "context_length": window}]}

    async def tokens(job: Job):
        while True:
            item = await job.queue.get()
            if isinstance(item, ApiError):
                raise item
            yield item

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(ApiError(400, f"请求体不是合法的 JSON（{e}）。"))
        try:
            r = parse_request(body, model_name, tokenizer, window)
            job = Job(r, asyncio.get_running_loop())
            engine.submit(job)
        except ApiError as e:
            return error(e)
        cid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        reply = ReplyText(tokenizer.decode, r["stop"])

        def usage(n):
            return {"prompt_tokens": len(r["ids"]), "completion_tokens": n, "total_tokens": len(r["ids"]) + n}

        def finish_reason(last: int) -> str:
            return "stop" if reply.stopped or (last in stop_ids and not r["ignore_eos"]) else "length"

        if not r["stream"]:
            text, n, last = [], 0, None
            try:
                async for token, done in tokens(job):
                    n, last = n + 1, token
                    if token not in stop_ids:
                        text.append(reply.push(token))
                    if reply.stopped or done:
                        break
                text.append(reply.finish())
            except ApiError as e:
                return error(e)
            finally:
                engine.cancel(job)             # 结束、出错或 stop 字符串提前结束：都在这一处释放槽位
            return {"id": cid, "object": "chat.completion", "created": now, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                                 "finish_reason": finish_reason(last)}],
                    "usage": usage(n)}

        def chunk(delta: dict, finish: str | None = None) -> str:
            data = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if r["include_usage"]:
                data["usage"] = None
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events():
            n, last = 0, None
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for token, done in tokens(job):
                    n, last = n + 1, token
                    piece = reply.push(token) if token not in stop_ids else ""
                    if piece:
                        yield chunk({"content": piece})
                    if reply.stopped or done:
                        break
                piece = reply.finish()
                if piece:
                    yield chunk({"content": piece})
                yield chunk({}, finish_reason(last))
                if r["include_usage"]:
                    data = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                            "choices": [], "usage": usage(n)}
                    yield f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            except ApiError as e:
                yield f"data: {json.dumps(e.body(), ensure_ascii=False)}\n\n"
            finally:
                engine.cancel(job)             # 客户端断开（或 stop 字符串提前结束）：释放槽位

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None, slots: int = 8,
          max_queue: int = 64, device: str = "cpu", threads: int | None = 1) -> None:
    """读模型、建应用、用 uvicorn 跑起来（Ctrl-C 停止）。

    threads：PyTorch 在 CPU 上的线程数（None = PyTorch 的默认）。默认 1：课程的小模型每一步主要花在调度算子上，
    多开的线程只会在空转时和处理 HTTP 的事件循环抢 CPU——2 核机器上 1 个线程时单个请求和并发请求都明显更快
    （自己量：python bench/bench_serve.py --threads 1，再 --threads 2）。大模型、多核机器上可以调大。
    """
    import torch
    import uvicorn
    if threads is not None:
        torch.set_num_threads(threads)

    from .chat_models import MODEL_ALIASES, load_chat_model
    from .llama import Llama
    model, tokenizer, description = load_chat_model(model_path, device=device)
    if not isinstance(model, Llama):
        raise TypeError(f"{model_path} 是 transformers 的模型：服务器的批量解码需要 course_lib 的 Llama。")
    name = name or (model_path if model_path in MODEL_ALIASES else "course-llama")
    app = create_app(model, tokenizer, name, slots, max_queue)
    print(f"{description}：http://{host}:{port}/v1（模型名 {name}，{slots} 个槽位）。Ctrl-C 停止。", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    from course_lib.cli.serve import main
    raise SystemExit(main())
