"""tests/test_train_full.py 的多进程测试用的脚本。

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py 输出文件夹

每个进程用 gloo 后端在 CPU 上训练全局批里属于自己的那一半；rank 0 把损失曲线写进 输出文件夹/history.json，
最终权重写进 输出文件夹/model（save_model 格式）。测试还会直接导入 run()，在单进程里用两倍的 batch_size
跑同一个训练作对照。
"""
import sys

import torch

from course_lib import GPT, GPTConfig, TrainConfig, Trainer, save_model
from course_lib.files import atomic_write_json
from course_lib.distributed import cleanup_distributed

WORLD_SIZE = 2
BATCH_PER_RANK = 2


def make_data(n: int, seed: int) -> torch.Tensor:
    """有规律的序列（下一个 token 大概率是当前的 +1），模型学得会，损失明显下降。"""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 32
    return torch.where(torch.rand(n, generator=g) < 0.8, base, torch.randint(32, (n,), generator=g))


def run(batch_size: int) -> Trainer:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig(max_steps=10, batch_size=batch_size, block_size=16, grad_accum_steps=2, lr=3e-3,
                      warmup_steps=2, eval_interval=5, eval_iters=2, progress=False, log=False, device="cpu")
    trainer = Trainer(model, make_data(3000, 0), make_data(1000, 1), cfg)
    trainer.fit()
    return trainer


if __name__ == "__main__":
    trainer = run(BATCH_PER_RANK)
    if trainer.is_main:
        history = {"world_size": trainer.world_size, **trainer.history.as_dict()}
        atomic_write_json(f"{sys.argv[1]}/history.json", history)
        save_model(trainer.model, f"{sys.argv[1]}/model")
    cleanup_distributed()
