"""The length of an array or buffer hint: a small C constant expression.

A length is what the C mark wrote, after macro expansion: integer literals,
`sizeof(type)` and `sizeof(variable)` (folded from DWARF when the binary is
read), `+ - * / % << >>`, parentheses, casts to integer types, and names.  A
name is a path: a field of the struct that holds the pointer, followed through
pointer and struct fields (`table->key_size`), or an integer variable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Path = tuple[str, ...]


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class Name:
    path: Path  # "table->key_size" is ("table", "key_size")


@dataclass(frozen=True)
class SizeOf:
    subject: str  # a type name or a variable name, with "[0]" for its element


@dataclass(frozen=True)
class Op:
    op: str  # a binary operator, or "neg"
    left: Expr
    right: Expr | None = None


Expr = Num | Name | SizeOf | Op


class HintExprError(ValueError):
    """A length that is not an expression this module understands."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>0[xX][0-9a-fA-F]+|\d+)[uUlL]*|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op><<|>>|->|[-+*/%().\[\]]))"
)
_INT_TYPE_WORDS = {"unsigned", "signed", "int", "long", "short", "char", "const"}
_BINARY = [("<<", ">>"), ("+", "-"), ("*", "/", "%")]  # loosest first


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise HintExprError(f"unexpected `{text[pos:]}`")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens) or (want is not None and self.peek() != want):
            raise HintExprError(f"expected `{want or 'more'}`")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expression(self, level: int = 0) -> Expr:
        if level == len(_BINARY):
            return self.unary()
        left = self.expression(level + 1)
        while self.peek() in _BINARY[level]:
            op = self.take()[1]
            left = Op(op, left, self.expression(level + 1))
        return left

    def unary(self) -> Expr:
        token = self.peek()
        if token in ("-", "+"):
            self.take()
            inner = self.unary()
            return Op("neg", inner) if token == "-" else inner
        if token == "(":
            self.take()
            if self._is_cast():
                while self.peek() != ")":
                    self.take()
                self.take(")")
                return self.unary()
            inner = self.expression()
            self.take(")")
            return inner
        kind, text = self.take()
        if kind == "num":
            return Num(int(text, 0) if not re.fullmatch(r"0\d+", text) else int(text, 8))
        if kind != "name":
            raise HintExprError(f"unexpected `{text}`")
        if text == "sizeof":
            return self.sizeof()
        path = [text]
        while self.peek() in ("->", "."):
            self.take()
            path.append(self.take()[1])
        return Name(tuple(path))

    def _is_cast(self) -> bool:
        """Whether the tokens after an opening parenthesis are an integer type name."""
        words = []
        for kind, text in self.tokens[self.pos :]:
            if text == ")":
                break
            words.append((kind, text))
        return bool(words) and all(
            kind == "name" and (text in _INT_TYPE_WORDS or text.endswith("_t"))
            for kind, text in words
        )

    def sizeof(self) -> SizeOf:
        if self.peek() != "(":  # sizeof name, sizeof name[0]
            words = [self.take()[1]]
            if self.peek() == "[":
                words += [self.take()[1], self.take()[1], self.take("]")[1]]
            return SizeOf("".join(words))
        self.take("(")
        words, depth = [], 0
        while depth or self.peek() != ")":
            text = self.take()[1]
            depth += {"(": 1, ")": -1}.get(text, 0)
            words.append(text)
        self.take(")")
        return SizeOf(" ".join(words).replace(" [ ", "[").replace(" ]", "]"))


def parse(text: str) -> Expr:
    """The expression of a length; HintExprError when it is not one."""
    parser = _Parser(text)
    expr = parser.expression()
    if parser.peek() is not None:
        raise HintExprError(f"unexpected `{parser.peek()}`")
    return expr


def fold(expr: Expr, sizeof: Callable[[str], int]) -> Expr:
    """The expression with every sizeof replaced by its number."""
    if isinstance(expr, SizeOf):
        return Num(sizeof(expr.subject))
    if isinstance(expr, Op):
        right = fold(expr.right, sizeof) if expr.right is not None else None
        return Op(expr.op, fold(expr.left, sizeof), right)
    return expr


def names(expr: Expr) -> list[Path]:
    """Every name the expression reads."""
    if isinstance(expr, Name):
        return [expr.path]
    if isinstance(expr, Op):
        return names(expr.left) + (names(expr.right) if expr.right is not None else [])
    return []


def evaluate(expr: Expr, lookup: Callable[[Path], int]) -> int:
    """The value of a folded expression, names read through `lookup`."""
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Name):
        return lookup(expr.path)
    if isinstance(expr, SizeOf):
        raise HintExprError("sizeof is folded when the binary is read")
    left = evaluate(expr.left, lookup)
    if expr.right is None:
        return -left
    right = evaluate(expr.right, lookup)
    if expr.op in ("/", "%") and right == 0:
        raise HintExprError("division by zero")
    return {
        "+": lambda: left + right,
        "-": lambda: left - right,
        "*": lambda: left * right,
        "/": lambda: int(left / right),
        "%": lambda: left - int(left / right) * right,
        "<<": lambda: left << right,
        ">>": lambda: left >> right,
    }[expr.op]()


def describe(expr: Expr) -> str:
    """The expression as C (sizeof already folded), for `points`."""
    if isinstance(expr, Num):
        return str(expr.value)
    if isinstance(expr, Name):
        return "->".join(expr.path)
    if isinstance(expr, SizeOf):
        return f"sizeof({expr.subject})"
    if expr.right is None:
        return f"-{describe(expr.left)}"
    return f"({describe(expr.left)} {expr.op} {describe(expr.right)})"
