"""tests/test_train_full.py 的多进程测试用的脚本。

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py 输出文件夹 [ddp|fsdp] [停在第几步|resume]

每个进程用 gloo 后端在 CPU 上训练全局批里属于自己的那一半（ddp：每个进程一份完整的模型；fsdp：参数切成两半）；
rank 0 把损失曲线写进 输出文件夹/history.json，最终权重写进 输出文件夹/model（save_model 格式）。
给了第三个参数时，检查点存在 输出文件夹/checkpoints：「停在第几步」训练到那一步就停下；再用 resume 运行一次，
从检查点续训到底——测试比较它和一口气训完的结果。测试还会直接导入 run()，在单进程里用两倍的 batch_size
跑同一个训练作对照。
"""
import sys

import torch

from course_lib import GPT, GPTConfig, TrainConfig, Trainer, save_model
from course_lib.distributed import cleanup_distributed
from course_lib.files import atomic_write_json

WORLD_SIZE = 2
BATCH_PER_RANK = 2


def make_data(n: int, seed: int) -> torch.Tensor:
    """有规律的序列（下一个 token 大概率是当前的 +1），模型学得会，损失明显下降。"""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 32
    return torch.where(torch.rand(n, generator=g) < 0.8, base, torch.randint(32, (n,), generator=g))


def run(batch_size: int, parallel: str = "ddp", checkpoint_dir: str | None = None, stop_at: int | None = None) -> Trainer:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig(max_steps=10, batch_size=batch_size, block_size=16, grad_accum_steps=2, lr=3e-3,
                      warmup_steps=2, eval_interval=5, eval_iters=2, progress=False, log=False, device="cpu",
                      parallel=parallel, checkpoint_dir=checkpoint_dir, resume="auto" if checkpoint_dir else None)
    trainer = Trainer(model, make_data(3000, 0), make_data(1000, 1), cfg)
    trainer.fit(stop_at=stop_at)
    return trainer


if __name__ == "__main__":
    out = sys.argv[1]
    parallel = sys.argv[2] if len(sys.argv) > 2 else "ddp"
    stage = sys.argv[3] if len(sys.argv) > 3 else None
    stop_at = int(stage) if stage not in (None, "resume") else None
    trainer = run(BATCH_PER_RANK, parallel, f"{out}/checkpoints" if stage else None, stop_at)
    final = trainer.plain_model()            # fsdp：所有进程一起收集权重，rank 0 拿到完整的一份
    if trainer.is_main:
        history = {"world_size": trainer.world_size, **trainer.history.as_dict()}
        atomic_write_json(f"{out}/history.json", history)
        save_model(final, f"{out}/model")
    cleanup_distributed()
