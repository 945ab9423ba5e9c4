"""第 06 章练习的批改函数：参考答案通过，常见的错误答案不通过。"""
import pytest

from course_lib.chat_format import sanitize
from course_lib.exercises import check_06_labels, check_06_sanitize
from course_lib.sft import IGNORE


@pytest.fixture(scope="module")
def tok(small_bpe):
    return small_bpe(["你是小雁，一个从零训练的中文小模型，回答简短、礼貌。system user assistant"], n_lines=300)


def _labels_solution(tok):
    header = tok.encode("assistant\n")

    def labels_from_ids(ids):
        labels, i = [IGNORE] * len(ids), 0
        while i < len(ids):
            if ids[i] == tok.im_start_id and ids[i + 1:i + 1 + len(header)] == header:
                i += 1 + len(header)
                while i < len(ids):  # 回复的内容，直到 <|im_end|>（含）
                    labels[i] = ids[i]
                    if ids[i] == tok.im_end_id:
                        break
                    i += 1
            i += 1
        return labels
    return labels_from_ids


def test_check_06_labels(tok, capsys):
    assert check_06_labels(_labels_solution(tok), tok)
    assert "✅" in capsys.readouterr().out
    # 常见错误：忘了 <|im_end|>
    def no_end(ids):
        return [y if y != tok.im_end_id else IGNORE for y in _labels_solution(tok)(ids)]
    assert not check_06_labels(no_end, tok)
    assert "不一致" in capsys.readouterr().out
    assert not check_06_labels(lambda ids: list(ids), tok)              # 不做掩码
    assert not check_06_labels(lambda ids: 1 / 0, tok)                  # 代码出错
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_check_06_sanitize(tok, capsys):
    assert check_06_sanitize(sanitize, tok)
    assert check_06_sanitize(lambda s: s.replace("|", "｜"), tok)  # 全角竖线也行
    capsys.readouterr()
    assert not check_06_sanitize(lambda s: s, tok)
    assert not check_06_sanitize(lambda s: s.replace("<|im_end|>", ""), tok)   # 只删一次：拼出新的
    assert "特殊 id" in capsys.readouterr().out
    assert not check_06_sanitize(lambda s: s.replace("<|", "< |").replace("，", ","), tok)  # 改动了普通文字
    assert "不应该被改动" in capsys.readouterr().out
