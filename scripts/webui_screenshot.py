"""给第 11 章的网页聊天拍一张截图 docs/webui.png（维护者用）：开网页、用真的浏览器发两条消息、等回复写完、截图。

    python scripts/webui_screenshot.py                      # 参考对话模型 chat，贪心解码，写 docs/webui.png
    python scripts/webui_screenshot.py --out /tmp/webui.png

需要 Debian 的 chromium 和 chromium-driver（apt-get install chromium chromium-driver）、selenium，
以及一种中文字体（apt-get install fonts-wqy-microhei；没有时汉字全是方框）。浏览器不联网、不下载任何东西。
tests/test_webui.py 也用这里的 missing / open_browser / open_page / set_number / send 在浏览器里测网页。
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUESTIONS = ("你好，你是谁？", "「画蛇添足」是什么意思？")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--lang=zh-CN")


def missing() -> str | None:
    """浏览器测试缺什么（一句中文）；都齐了返回 None。"""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "没有装 selenium：pip install selenium"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"没有 {path}：apt-get install {package}"
    return None


def _no_chinese_font() -> str | None:
    """截图要有中文字体，否则汉字全是方框。"""
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout if shutil.which("fc-list") else ""
    return None if fonts.strip() else "没有中文字体（截图里的汉字会是方框）：apt-get install fonts-wqy-microhei"


def open_browser(profile_dir, width: int = 1280, height: int = 800):
    """无头的 chromium（selenium 驱动），中文界面，视口 width×height；profile_dir 是一个新的空文件夹。"""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={profile_dir}",):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"intl.accept_languages": "zh-CN,zh"})   # gradio 自己的按钮文字也用中文
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})               # 记下所有请求：检查有没有联网
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def _wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    from selenium.common.exceptions import TimeoutException
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise TimeoutError(f"等了 {timeout} 秒，{what}。") from None


def _textbox(driver):
    from selenium.webdriver.common.by import By
    boxes = driver.find_elements(By.CSS_SELECTOR, 'textarea[placeholder^="输入消息"], textarea[data-testid="textbox"]')
    return boxes[-1] if boxes else None      # 对话的输入框在页面最后


def open_page(driver, url: str, timeout: float = 60) -> None:
    """打开网页，等到对话的输入框出现。"""
    driver.get(url)
    _wait(driver, _textbox, timeout, f"{url} 还是没有出现输入框")


def set_number(driver, label: str, value) -> None:
    """把标签为 label 的滑块设成 value（在滑块旁边的数字框里输入，再按 Enter）。"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element(By.CSS_SELECTOR, f'input[aria-label="number input for {label}"]')
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)
    _wait(driver, lambda d: float(box.get_attribute("value")) == float(value), 5, f"{label} 没有变成 {value}")


def _replies(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=\"bot\"]')].map(e => e.innerText.trim());")


def send(driver, text: str, timeout: float = 120) -> str:
    """在输入框里输入 text、按 Enter，等回复流式地写完（输入框重新可用），返回回复的文字。"""
    from selenium.webdriver.common.keys import Keys
    before = len(_replies(driver))
    box = _textbox(driver)
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    # 生成期间输入框是禁用的；多出一条回复、输入框又能用了，就是写完了
    _wait(driver, lambda d: len(_replies(d)) > before and _textbox(d).is_enabled(), timeout, "回复还没有写完")
    return _replies(driver)[-1]


def external_requests(driver, url: str) -> list[str]:
    """浏览器发出的、不是发给 url 所在主机和端口的 http(s) 请求（应该是空列表：网页什么都不从网上加载）。"""
    origin = urlsplit(url).netloc
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            target = urlsplit(message["params"]["request"]["url"])
            if target.scheme in ("http", "https") and target.netloc != origin:
                found.append(target.geturl())
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="给网页聊天拍一张截图。")
    ap.add_argument("--model", default="chat", help="模型（默认 chat：参考对话模型）")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "webui.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    args = ap.parse_args(argv)
    reason = missing() or _no_chinese_font()
    if reason:
        print(f"错误：{reason}", file=sys.stderr)
        return 2
    from course_lib.files import atomic_write_bytes
    from course_lib.webui import LocalBackend, build_app, launch

    t0 = time.perf_counter()
    backend = LocalBackend.load(args.model)
    profile = tempfile.mkdtemp(prefix="webui-chromium-")
    with launch(build_app(backend)) as page:
        driver = open_browser(profile, args.width, args.height)
        try:
            open_page(driver, page.url)
            set_number(driver, "温度（temperature）", 0)             # 贪心：每次截出来的回复都一样
            set_number(driver, "重复惩罚（repetition penalty）", 1)
            for question in QUESTIONS:
                print(f"{question} → {send(driver, question)}")
            time.sleep(0.5)                                           # 等滚动和按钮的动画停下
            outside = external_requests(driver, page.url)
            png = base64.b64decode(driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"])
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    if outside:
        print(f"错误：网页向外面发了请求：{outside[:3]}", file=sys.stderr)
        return 1
    atomic_write_bytes(args.out, png)
    print(f"写好了 {args.out}（{len(png) / 1024:.0f} KB，{time.perf_counter() - t0:.1f} 秒）")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
