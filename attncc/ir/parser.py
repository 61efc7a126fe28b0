"""The parser of the text form (grammar in grammar.lark, documented in docs/ir.md).

`parse` turns text into a Cascade or raises `ParseError` with the line and column of the
problem and what was expected there. It resolves names (which line is the initial value of
which running update, which listed reduction indices belong to which Einsum) but does not judge
the cascade: that is the verifier's job, so that programmatic IR and parsed IR are checked by
the same rules.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from pathlib import Path

import lark
import sympy

from attncc.errors import ParseError, SourceSpan
from attncc.ir.cascade import BlockSparse, Cascade, DType, Partition, Rank, Role, TensorDecl
from attncc.ir.einsum import Einsum, Filter, ReduceOp
from attncc.ir.expr import INFIX_BY_SYMBOL, OPS, Access, Call, Const, Coord, Expr, Size
from attncc.ir.indexing import (
    division_operands,
    floordiv,
    format_index,
    index_symbol,
    index_vars,
    size_symbol,
)

_TERMINAL_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "INT": "an integer",
    "INF": "inf",
    "REDUCTION": "a reduction such as max(m)",
    "COMPARE": "a comparison",
    "ADD_OP": "'+' or '-'",
    "NEG": "'-'",
    "MUL_OP": "'*', '/', '//' or '%'",
    "IMUL_OP": "'*', '//' or '%'",
    "_NL": "end of line",
    "$END": "end of input",
}


@functools.cache
def _lark() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True)


def parse(text: str, *, filename: str | None = None, name: str | None = None) -> Cascade:
    """Parse a cascade. Without a `cascade NAME` line it is named `name`, or after the file."""
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as error:
        raise _syntax_error(error, text, filename) from None
    default_name = name or (Path(filename).stem if filename else "cascade")
    return _Resolver(filename).cascade(tree, default_name)


def keywords() -> frozenset[str]:
    """Words of the text form that cannot name a tensor, a rank or an index variable."""
    literals = (t.pattern.value for t in _lark().terminals if t.pattern.type == "str")
    return frozenset(w for w in literals if w.isidentifier())


def reduction_prefix() -> re.Pattern[str]:
    """The pattern of a reduction prefix (`max(m)`); the printer keeps map calls from matching."""
    return re.compile(_lark().get_terminal("REDUCTION").pattern.value)


def parse_file(path: str | Path) -> Cascade:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ParseError(f"cannot read {path}: {error.strerror}") from None
    return parse(text, filename=str(path))


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    pattern = _lark().get_terminal(name).pattern
    return f"'{pattern.value}'"


def _syntax_error(
    error: lark.exceptions.UnexpectedInput, text: str, filename: str | None
) -> ParseError:
    lines = text.splitlines() or [""]
    line, column = error.line, error.column
    at_end = isinstance(error, lark.exceptions.UnexpectedEOF) or (
        isinstance(error, lark.exceptions.UnexpectedToken) and error.token.type == "$END"
    )
    if at_end or line is None or line < 1:
        line, column = len(lines), len(lines[-1]) + 1
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        found = f"unexpected character {error.char!r}"
        expected = error.allowed or set()
    elif isinstance(error, lark.exceptions.UnexpectedToken) and not at_end:
        token = error.token
        found = "unexpected end of line" if token.type == "_NL" else f"unexpected '{token}'"
        expected = error.accepts or error.expected
    else:
        found = "unexpected end of input"
        expected = getattr(error, "expected", set())
    source = lines[line - 1] if line <= len(lines) else ""
    hint = _reduction_hint(source[: column - 1])
    if hint is not None:
        message, column = hint
    else:
        wanted = sorted({_describe_terminal(t) for t in expected})
        message = found + (f"; expected {', '.join(wanted)}" if wanted else "")
    message += f"\n    {source}\n    {' ' * (column - 1)}^"
    return ParseError(message, SourceSpan(line, column, filename))


_CALL_AT_START = re.compile(r"=\s*([A-Za-z_]\w*)\(\s*(\w+(?:\s*,\s*\w+)*)\s*\)\s*$")


def _reduction_hint(before: str) -> tuple[str, int] | None:
    """A clearer message, and the column of the call it is about, when the text before an error
    reads as a failed reduction prefix (`= prod(m) X[m]`, `= max(M) X[m]`) or as a map max of
    coordinates taken for one."""
    match = _CALL_AT_START.search(before)
    if match is None:
        return None
    column = match.start(1) + 1
    name, indices = match.group(1), [i.strip() for i in match.group(2).split(",")]
    call = f"{name}({', '.join(indices)})"
    if name not in {op.value for op in ReduceOp}:
        message = (
            f"unknown reduce operator '{name}'; a reduction prefix is sum(...), max(...) or "
            "min(...) over index variables"
        )
    elif any(not i.islower() for i in indices):
        lowered = f"{name}({', '.join(i.lower() for i in indices)})"
        message = f"{call} must reduce over index variables, which are lower case: {lowered}"
    else:
        message = (
            f"{call} at the start of a right side is a reduction prefix and needs an expression "
            f"after it; for the map operator write ({call})"
        )
    return message, column


def format_access(access: Access) -> str:
    """`T[i,j]` as the printer writes it (the printer imports this module, not the reverse)."""
    return f"{access.tensor}[{','.join(format_index(i) for i in access.indices)}]"


class _Resolver:
    """Turns the parse tree into IR values, reporting misuse of names with their position."""

    def __init__(self, filename: str | None) -> None:
        self.filename = filename

    def span(self, node: lark.Tree | lark.Token) -> SourceSpan:
        if isinstance(node, lark.Token):
            return SourceSpan(node.line or 0, node.column or 0, self.filename)
        return SourceSpan(node.meta.line, node.meta.column, self.filename)

    def error(self, message: str, node: lark.Tree | lark.Token) -> ParseError:
        return ParseError(message, self.span(node))

    def cascade(self, tree: lark.Tree, default_name: str) -> Cascade:
        name: str | None = None
        ranks: list[Rank] = []
        partitions: list[Partition] = []
        decls: dict[Role, list[TensorDecl]] = {Role.INPUT: [], Role.OUTPUT: []}
        einsums: list[Einsum] = []
        sparse: list[BlockSparse] = []
        inits: list[tuple[lark.Tree, Access, Expr]] = []
        for statement in tree.children:
            kind = statement.data
            if kind == "header":
                if name is not None:
                    raise self.error("a file holds one cascade; second 'cascade' line", statement)
                name = str(statement.children[0])
            elif kind == "rank_decl":
                ranks.extend(self.rank(item) for item in statement.children)
            elif kind == "partition_decl":
                parent, outer, inner = (self.rank_name(t) for t in statement.children)
                partitions.append(Partition(parent, outer, inner, self.span(statement)))
            elif kind == "tensor_decl":
                decl = self.tensor_decl(statement)
                decls[decl.role].append(decl)
            elif kind == "sparse_decl":
                sparse.append(self.sparse(statement))
            elif self.is_init(statement):
                inits.append((statement, self.access(statement.children[0]), self.init(statement)))
            else:
                einsums.append(self.einsum(statement))
        for statement, target, value in inits:
            einsums = self.attach_init(einsums, statement, target, value)
        return Cascade(
            name=name or default_name,
            ranks=tuple(ranks),
            partitions=tuple(partitions),
            inputs=tuple(decls[Role.INPUT]),
            outputs=tuple(decls[Role.OUTPUT]),
            einsums=tuple(einsums),
            sparse=tuple(sparse),
        )

    def sparse(self, statement: lark.Tree) -> BlockSparse:
        """`sparse S[m1, p // 64]`: the key tile index, then the query index over its tile."""
        access = self.access(statement.children[0])
        usage = f"write sparse {access.tensor}[m1, p // 64]: a key tile index, then queries // tile"
        if len(access.indices) != 2 or not index_vars(access.indices[0]) == {
            str(access.indices[0])
        }:
            raise self.error(usage, statement)
        key, query = access.indices
        tile: sympy.Expr = sympy.Integer(1)
        if isinstance(query, sympy.floor):
            query, tile = division_operands(query)
        if not (query.is_Symbol and index_vars(query)) or index_vars(tile):
            raise self.error(usage, statement)
        return BlockSparse(
            access.tensor, str(key).upper(), str(query).upper(), tile, self.span(statement)
        )

    def rank_name(self, token: lark.Token | lark.Tree) -> str:
        if not str(token)[:1].isalpha():
            raise self.error(f"rank name '{token}' must start with a letter", token)
        if str(token) != str(token).upper():
            raise self.error(
                f"rank name '{token}' must be upper case: declare rank {str(token).upper()}, "
                f"whose index variable is {str(token).lower()}",
                token,
            )
        return str(token)

    def rank(self, item: lark.Tree) -> Rank:
        token, size = item.children
        name = self.rank_name(token)
        value = size_symbol(name) if size is None else self.index(size)
        return Rank(name, value, self.span(token))

    def tensor_decl(self, statement: lark.Tree) -> TensorDecl:
        role, name, *rest = statement.children
        *indices, dtype = rest
        ranks = tuple(str(i).upper() for i in indices if i is not None)
        for index in indices:
            if index is not None and str(index) != str(index).lower():
                fixed = ",".join(str(i).lower() for i in indices)
                raise self.error(
                    f"declare {name} with index variables (lower case): {name}[{fixed}]", index
                )
        try:
            element = DType(str(dtype)) if dtype is not None else DType.F32
        except ValueError:
            known = ", ".join(d.value for d in DType)
            raise self.error(f"unknown element type '{dtype}'; use one of {known}", dtype) from None
        return TensorDecl(
            str(name), ranks, element, Role(str(role.children[0])), self.span(statement)
        )

    def is_init(self, statement: lark.Tree) -> bool:
        """A line writing coordinate 0 of some rank gives a running update its initial value."""
        return any(i == 0 for i in self.access(statement.children[0]).indices)

    def init(self, statement: lark.Tree) -> Expr:
        _, reduction, body, filter_ = statement.children
        if reduction is not None or filter_ is not None:
            raise self.error("an initial value cannot reduce or have a 'where' clause", statement)
        return self.expr(body)

    def attach_init(
        self, einsums: list[Einsum], statement: lark.Tree, target: Access, value: Expr
    ) -> list[Einsum]:
        text = format_access(target)
        for position, einsum in enumerate(einsums):
            if einsum.tensor != target.tensor:
                continue
            if einsum.iterative_index is None:
                raise self.error(
                    f"initial value {text} given, but {format_access(einsum.output)} is not a "
                    "running update (no 'r+1' index on its left side)",
                    statement,
                )
            expected = einsum.init_indices
            if expected != target.indices:
                start = format_access(Access(einsum.tensor, expected))
                raise self.error(
                    f"{text} is not the coordinate-0 value of the running update "
                    f"{format_access(einsum.output)}; write {start}",
                    statement,
                )
            if einsum.init is not None:
                raise self.error(f"second initial value for {target.tensor}", statement)
            started = replace(einsum, init=value, init_span=self.span(statement))
            return [*einsums[:position], started, *einsums[position + 1 :]]
        raise self.error(
            f"initial value {text} but no Einsum updates {target.tensor} with an 'r+1' index",
            statement,
        )

    def einsum(self, statement: lark.Tree) -> Einsum:
        lhs, reduction, body, filter_ = statement.children
        einsum = Einsum(
            tensor=str(lhs.children[0]),
            indices=self.access(lhs).indices,
            expr=self.expr(body),
            filter=self.filter(filter_) if filter_ is not None else None,
            span=self.span(statement),
        )
        return replace(einsum, reduce=self.reduce_op(einsum, reduction))

    def reduce_op(
        self, einsum: Einsum, reduction: lark.Token | lark.Tree | None
    ) -> ReduceOp | None:
        reduced = einsum.reduced
        if reduction is None:
            return ReduceOp.SUM if reduced else None
        op, _, rest = str(reduction).partition("(")
        listed = {name.strip() for name in rest.rstrip(")").split(",")}
        if listed != reduced:
            found = ", ".join(sorted(reduced)) or "nothing"
            raise self.error(
                f"{reduction} lists {', '.join(sorted(listed))} but {einsum.tensor} reduces "
                f"{found} (the indices missing on its left side)",
                reduction,
            )
        return ReduceOp(op)

    def filter(self, tree: lark.Tree) -> Filter:
        predicate, fill = tree.children
        return Filter(self.expr(predicate), self.fill(fill) if fill is not None else None)

    def fill(self, tree: lark.Tree) -> float:
        sign, number = tree.children
        value = float(str(number))
        return -value if sign is not None else value

    def access(self, tree: lark.Tree) -> Access:
        name, *indices = tree.children
        return Access(str(name), tuple(self.index(i) for i in indices if i is not None))

    def expr(self, node: lark.Tree) -> Expr:
        kind = node.data
        children = node.children
        if kind == "access":
            return self.access(node)
        if kind == "number":
            return Const(float(str(children[0])))
        if kind == "bare_name":
            text = str(children[0])
            return Size(text) if text[:1].isupper() else Coord(text)
        if kind == "negate":
            operand = self.expr(children[1])
            if isinstance(operand, Const):
                return Const(-operand.value)
            return Call("neg", (operand,))
        if kind == "call":
            return self.call(node)
        if kind in ("binary", "compare"):
            left, symbol, right = children
            op = INFIX_BY_SYMBOL[(str(symbol), 2)]
            return Call(op, (self.expr(left), self.expr(right)))
        op = {"or_": "or", "and_": "and", "not_": "not"}[kind]
        return Call(op, tuple(self.expr(c) for c in children))

    def call(self, node: lark.Tree) -> Expr:
        name, *args = node.children
        info = OPS.get(str(name))
        if info is None:
            known = ", ".join(sorted(OPS))
            raise self.error(f"unknown operator '{name}'; known operators: {known}", name)
        if len(args) != info.arity:
            plural = "s" if info.arity != 1 else ""
            raise self.error(f"{name} takes {info.arity} operand{plural}, got {len(args)}", name)
        return Call(info.name, tuple(self.expr(a) for a in args))

    def index(self, node: lark.Tree) -> sympy.Expr:
        kind = node.data
        children = node.children
        if kind == "index_name":
            text = str(children[0])
            return size_symbol(text) if text[:1].isupper() else index_symbol(text)
        if kind == "index_int":
            return sympy.Integer(int(str(children[0])))
        if kind == "index_negate":
            return -self.index(children[1])
        if kind == "index_ceil":
            numerator, denominator = (self.index(c) for c in children)
            return sympy.ceiling(numerator / denominator)
        left, symbol, right = children
        a, b = self.index(left), self.index(right)
        operator = str(symbol)
        if operator in ("//", "%") and not ((b.is_number and b > 0) or b.is_positive):
            raise self.error(
                f"'{operator}' in an index needs a positive constant or rank size on its right",
                symbol,
            )
        results = {
            "+": lambda: a + b,
            "-": lambda: a - b,
            "*": lambda: a * b,
            "//": lambda: floordiv(a, b),
            "%": lambda: sympy.Mod(a, b),
        }
        return results[operator]()
