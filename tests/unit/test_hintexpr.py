"""Hint lengths (binary/hintexpr.py): C constant expressions as the marks write them,
after macro expansion."""

from __future__ import annotations

import pytest

from ekiden_trace.binary.hintexpr import HintExprError, Name, evaluate, fold, names, parse

SIZES = {"struct range": 8, "int": 4, "ranges": 64, "ranges[0]": 8}


def value(text: str, **variables: int) -> int:
    expr = fold(parse(text), SIZES.__getitem__)
    return evaluate(expr, lambda path: variables["->".join(path)])


def test_numbers_sizeof_and_arithmetic() -> None:
    assert value("64") == 64
    assert value("0x10UL") == 16 and value("010") == 8
    assert value("(2 * (sizeof(struct range) / sizeof(int)))") == 4
    assert value("sizeof ranges / sizeof ranges[0]") == 8
    assert value("((size_t)4) << 2") == 16
    assert value("-3 + 10 % 4") == -1


def test_names_are_fields_paths_or_variables() -> None:
    assert names(parse("table->key_size * 2 + n")) == [("table", "key_size"), ("n",)]
    assert parse("a.b") == Name(("a", "b"))
    assert value("table->key_size * 2", **{"table->key_size": 8}) == 16


@pytest.mark.parametrize("text", ["n +", "(n", "n ? 1 : 2", '"s"', ""])
def test_what_is_not_an_expression_is_an_error(text: str) -> None:
    with pytest.raises(HintExprError):
        parse(text)
