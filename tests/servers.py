"""测试共用的小工具：找一个空闲端口；在后台线程里用 uvicorn 跑一个 ASGI 应用（test_serve、test_webui 都用）。

tests/ 没有 __init__.py：pytest 收集测试文件时把 tests/ 放进 sys.path，所以测试里写 from servers import Running, free_port。
"""
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """with Running(app, port) as s: …——应用在 127.0.0.1:port 上跑着（后台线程），s.url 是 OpenAI 风格的 …/v1。"""

    def __init__(self, app, port):
        import uvicorn
        self.app, self.port = app, port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "服务器没有启动"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "服务器没有按时停下"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"
