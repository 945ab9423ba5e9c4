"""python -m course_lib.nbrun 的入口：实现在 course_lib/cli/nbrun.py。"""

if __name__ == "__main__":
    from course_lib.cli.nbrun import main
    raise SystemExit(main())
