"""python -m course_lib.eval：评测一个模型，写 JSON + Markdown 成绩单（实现在 course_lib.eval）。"""
from __future__ import annotations

from . import ArgumentParser, run


def build_parser() -> ArgumentParser:
    from ..eval import GROUPS, TASKS
    p = ArgumentParser(prog="python -m course_lib.eval",
                       description="评测一个模型：知识选择题（见过/没见过两半）、每字比特数、对话模型的技能题，"
                                   "每个比例带 95 % 置信区间和基线；结果写成 JSON 和 Markdown 成绩单。")
    p.add_argument("--model", required=True,
                   help="base（参考基座模型）、sft（第 06 章的 SFT 模型）、chat（参考对话模型）、aligned（第 10 章对齐后的模型）、course_lib 或 transformers 的模型文件夹，"
                        "或联网时 Hub 上的模型名（如 Qwen/Qwen2.5-0.5B-Instruct）")
    p.add_argument("--tasks", default="all",
                   help=f"逗号分隔的任务：{', '.join(TASKS)}；或一组：{', '.join(GROUPS)}（默认 all）")
    p.add_argument("--limit", type=int, default=None, help="每个任务（每一半）最多评几道题（默认：全部）")
    p.add_argument("--out", default=None, help="成绩单写到哪个文件夹（默认 docs/）")
    p.add_argument("--name", default=None, help="成绩单的文件名 report_<name>.md（默认取模型名）")
    p.add_argument("--no-baselines", action="store_true", help="不算基线（计数二元模型、SnowNLP），更快")
    p.add_argument("--device", default="cpu", help="cpu（默认）、cuda、mps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from ..device import get_device
        from ..eval import evaluate, load_subject, parse_tasks, write_report
        from ..paths import repo_root
        tasks = parse_tasks(args.tasks)
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit 必须是 ≥ 1 的整数，收到 {args.limit}。")
        out = args.out
        if out is None:
            root = repo_root()
            if root is None:
                raise ValueError("不在课程仓库里，找不到 docs/：请用 --out 指定成绩单写到哪里。")
            out = root / "docs"
        subject = load_subject(args.model, device=get_device(args.device))
        print(f"评测 {subject.description}：{', '.join(tasks)}", flush=True)
        result = evaluate(subject, tasks, args.limit, baselines=not args.no_baselines)
        js, md = write_report(result, out, args.name)
        print(f"用时 {result['seconds']:.0f} 秒。成绩单：{md}（数据：{js}）")
    return run(body)
