"""python -m course_lib.start 的入口：实现在 course_lib/cli/start.py。"""

if __name__ == "__main__":
    from course_lib.cli.start import main
    raise SystemExit(main())
