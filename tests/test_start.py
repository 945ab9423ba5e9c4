from course_lib.start import main


def test_start_check_mode(capsys):
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "profile" in out and "中文字体" in out and "不启动 JupyterLab" in out
