"""Count the package's lines of code outside ``testing/``: no blank, comment or docstring lines.

Issue 19's measuring stick (``python scripts/count_code_lines.py``): the total, then the
modules over 400 lines (physical lines, as an editor shows them).
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flask_keen_signup"
LIMIT = 400


def docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers covered by module, class and function docstrings."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    end = body[0].end_lineno or body[0].lineno
                    lines.update(range(body[0].lineno, end + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines that hold at least one token other than a comment, a newline or indentation,
    and are not part of a docstring."""
    skip = docstring_lines(ast.parse(source))
    lines: set[int] = set()
    ignored = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
               tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in ignored:
            continue
        for line in range(token.start[0], token.end[0] + 1):
            if line not in skip:
                lines.add(line)
    return len(lines)


def main() -> int:
    total = 0
    large: list[tuple[int, str]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue
        source = path.read_text(encoding="utf-8")
        total += code_lines(source)
        physical = source.count("\n")
        if physical > LIMIT:
            large.append((physical, str(path.relative_to(ROOT))))
    print(f"code lines outside testing/: {total}")
    print(f"modules over {LIMIT} lines: {len(large)}")
    for physical, name in sorted(large, reverse=True):
        print(f"  {physical:5d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
