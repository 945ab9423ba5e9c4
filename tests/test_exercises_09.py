import pytest

from course_lib import load_corpus
from course_lib.exercises import check_09_repetition_penalty, check_09_stream_pieces, check_09_top_p
from course_lib.generate import StreamDecoder, apply_repetition_penalty, top_p_filter
from course_lib.tokenizer import BPETokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return BPETokenizer.train(load_corpus("news", "val"), tmp_path_factory.mktemp("tok"), vocab_size=3000)


def test_top_p_checker(capsys):
    assert check_09_top_p(top_p_filter)

    def keeps_the_token_that_crosses_too_late(logits, p):   # 常见错误：用含自己的累计概率判断，多删了一个
        s, order = logits.sort(-1, descending=True)
        remove = s.softmax(-1).cumsum(-1) > p
        return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    assert not check_09_top_p(keeps_the_token_that_crosses_too_late)
    assert not check_09_top_p(lambda logits, p: logits)
    assert not check_09_top_p(lambda logits, p: 1 / 0)
    out = capsys.readouterr().out
    assert "✅" in out and "ZeroDivisionError" in out


def test_repetition_penalty_checker(capsys):
    assert check_09_repetition_penalty(apply_repetition_penalty)
    divide_all = lambda logits, prev, p: logits.scatter(-1, prev, logits.gather(-1, prev) / p)  # noqa: E731
    assert not check_09_repetition_penalty(divide_all)
    assert "负的 logit 也除以了 penalty" in capsys.readouterr().out
    assert not check_09_repetition_penalty(lambda logits, prev, p: logits)


def test_stream_pieces_checker(tok, capsys):
    def right(ids, decode):
        dec = StreamDecoder(decode)
        return [dec.push(i) for i in ids] + [dec.finish()]
    assert check_09_stream_pieces(right, tok)
    assert not check_09_stream_pieces(lambda ids, decode: [decode([i]) for i in ids], tok)   # 劈开了多字节的字
    assert "劈开" in capsys.readouterr().out
    assert not check_09_stream_pieces(lambda ids, decode: [decode(ids)], tok)               # 不是流式
    assert "不是流式" in capsys.readouterr().out
