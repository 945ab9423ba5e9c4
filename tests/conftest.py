import importlib
import os

import pytest
import torch
import zmq

# 测试（包括 nbval 执行的 notebook）默认用 tiny profile：结果与提交的输出可比，GPU 机器上也不会跑成 small。
# 想在 GPU 上用别的档位测试：COURSE_PROFILE=small pytest
os.environ.setdefault("COURSE_PROFILE", "tiny")

# pytest-xdist（pyproject 的 addopts 里 -n 2）：每个进程只用分到的那几个核。2 核机器上 2 个进程各开 2 个线程，
# 四个线程抢两个核，反而更慢。环境变量也设上：nbval 启动的 notebook 内核、测试启动的子进程都继承它。
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _unbounded_iopub_client():
    """nbval 的内核客户端：接收队列不设上限（ZMQ_RCVHWM = 0），一条 iopub 消息都不丢。

    nbval（0.11，plugin.py 的 IPyNbCell.runcell）先在 shell 通道上等格子执行完（最多 --nbval-cell-timeout 秒），
    之后才去读 iopub 通道上的输出和最后的 idle 状态（每条最多等 output_timeout 秒）。格子执行期间没有人读 iopub，
    消息全堆在 ZMQ 的队列里；内核的 XPUB 发送队列和客户端的 SUB 接收队列默认各只容 1000 条，满了就静默丢弃。
    进度条（tqdm 的 ipywidgets 版每 0.1 秒发几条 comm 消息）在慢机器上跑两三分钟就能堆满：最后那条 idle 被丢掉，
    nbval 等不到，报「Timeout of N seconds exceeded waiting for output」——格子本身其实早已正常结束。
    接收队列不设上限后，客户端的 ZMQ 后台线程随到随收，内核那边的队列永远不会满。
    """
    try:
        import nbval.kernel
    except ImportError:  # 没装 nbval：不跑 notebook，也就不需要
        return

    class KernelManager(nbval.kernel.KernelManager):
        def client(self, **kwargs):
            kc = super().client(**kwargs)  # nbval 拿到客户端之后才 start_channels()，那时才建套接字
            kc.context.setsockopt(zmq.RCVHWM, 0)  # 客户端自己的 context：之后建的套接字（包括 iopub）都不限接收队列
            return kc

    nbval.kernel.KernelManager = KernelManager  # start_new_kernel 按模块里的名字取 KernelManager


_unbounded_iopub_client()


def pytest_collection_modifyitems(config, items):
    # output_timeout 不是「格子多久没输出」：nbval 在格子执行完（shell 通道回复）之后才读 iopub，这是等每一条剩下的
    # 输出和最后的 idle 状态的时限（nbval 写死 5 秒）。长格子执行期间攒下的几千条消息，内核要在这之后才发完；
    # 又慢又忙的机器上这可能要很久，所以给它和执行同样的时限（pyproject 里的 --nbval-cell-timeout）。
    cell_timeout = config.getoption("nbval_cell_timeout", default=None)
    for item in items:
        if hasattr(item, "output_timeout") and cell_timeout:
            item.output_timeout = cell_timeout
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="需要 CUDA GPU（CI 上没有）")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tmp_data_dir(tmp_path, monkeypatch):
    """把课程的数据目录指到临时文件夹，测试不碰仓库里的缓存。"""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def small_bpe(tmp_path_factory):
    """造一个小 BPE 分词器：新闻验证集的前 n_lines 行 + extra 几行，词表比字节回退要求的下限多 margin 个。"""
    from course_lib.data import load_corpus
    from course_lib.tokenizer import BPETokenizer

    def make(extra=(), margin=200, n_lines=400):
        lines = [line for line in load_corpus("news", "val").splitlines() if line.strip()][:n_lines] + list(extra)
        return BPETokenizer.train(lines, tmp_path_factory.mktemp("tok"), vocab_size=BPETokenizer.min_vocab_size(lines) + margin)
    return make


@pytest.fixture(scope="session")
def needed():
    """need(模块, 安装方法)：导入一个可选的依赖；没装时跳过这个测试——但在 CI 里（.ci/run 设了 CI=true，并且装好了
    llama.cpp 和浏览器）算失败：这些测试在 CI 上必须真的运行，不能悄悄跳过。"""
    def need(module: str, install: str):
        try:
            return importlib.import_module(module)
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail(f"CI 上应该装好了 {module}（{install}），却导入不了：请检查 .ci/run。")
            pytest.skip(f"需要 {module}：{install}")
    return need
