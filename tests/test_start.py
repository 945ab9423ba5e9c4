from course_lib.cli.start import main


def test_start_check_mode(capsys):
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "profile" in out and "中文字体" in out and "不启动 JupyterLab" in out


def test_start_help_and_typo_do_not_launch(capsys):
    assert main(["--help"]) == 0
    assert "--check" in capsys.readouterr().out
    assert main(["--chek"]) == 2
    assert "不认识的参数 --chek" in capsys.readouterr().err
