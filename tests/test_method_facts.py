"""Method facts come from the registry (:mod:`maxq.methods`), never from a method's name: no
module of maxq/ compares a value with a registered method name written out as a string (a
table or a default that names methods is data and stays allowed)."""
from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from maxq import stats
from maxq.methods import METHODS, is_dense

PACKAGE = Path(__file__).resolve().parents[1] / "maxq"


def _method_constants(sources: list[str]) -> set[str]:
    """Module-level names bound to a registered method name (``DENSE = "DenseConv2dBN"``), and
    those of :mod:`maxq.stats` however they are computed."""
    names = {k for k, v in vars(stats).items() if isinstance(v, str) and v in METHODS}
    for source in sources:
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and node.value.value in METHODS:
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _name_checks(source: str, constants: set[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, name) of every comparison with a registered method name: ``x == "Name"``,
    ``x in ("Name", ...)``, or ``x == DENSE`` / ``x != stats.DENSE`` with such a constant."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        equality = all(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)
        for side in (node.left, *node.comparators):
            items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            found += [(node.lineno, item.value) for item in items
                      if isinstance(item, ast.Constant) and item.value in METHODS]
            ident = side.id if isinstance(side, ast.Name) else \
                side.attr if isinstance(side, ast.Attribute) else None
            if equality and ident in constants:
                found.append((node.lineno, ident))
    return found


def test_no_module_checks_a_method_by_its_name():
    sources = {p.name: p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "methods.py"}
    constants = _method_constants(list(sources.values()))
    checks = {name: _name_checks(text, constants) for name, text in sources.items()}
    assert {k: v for k, v in checks.items() if v} == {}


def test_the_name_check_finds_one():
    assert _name_checks('if method == "DenseConv2dBN":\n    pass\n') == [(1, "DenseConv2dBN")]
    assert _name_checks('ok = m in ("LBC", "other")\n') == [(1, "LBC")]
    constants = _method_constants(['DENSE = "DenseConv2dBN"\n'])
    assert "DENSE" in constants
    assert _name_checks("dense = method == stats.DENSE\n", constants) == [(1, "DENSE")]
    assert _name_checks("ok = method == ref\n", constants) == []


def test_dense_runs_are_the_registry_dense_methods():
    """stats' dense baseline is the registry's maskless method, and dense_reference picks the
    runs the registry calls dense."""
    assert is_dense(stats.DENSE) and not METHODS[stats.DENSE].sparse
    runs = pd.DataFrame({"row": ["a", "a", "a"], "method": [stats.DENSE, stats.MAXQ, "LBC"],
                         "seed": [0, 0, 0], "finished": [True] * 3, "arch": ["r"] * 3,
                         "width_mult": [1.0] * 3, "best_top1": [1.0, 2.0, 3.0]})
    assert list(stats.dense_reference(runs, "a")["method"]) == [stats.DENSE]
