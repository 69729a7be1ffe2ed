"""The package's shape, checked: no module over 400 lines, no function over 60 lines or 8 parameters."""

import ast
from pathlib import Path

import promptkd_ray

PACKAGE = Path(promptkd_ray.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_60_lines():
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = node.end_lineno - start + 1
    assert long == {}


def parameter_count(node) -> int:
    """Parameters a function takes: positional-only, positional, keyword-only, *args and **kwargs,
    not a method's self or cls."""
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args]
    bound = 1 if names and names[0] in ("self", "cls") else 0
    return len(names) - bound + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def wide_functions(source: str) -> dict:
    """{function name: parameters} of every function in `source` taking more than MAX_PARAMETERS."""
    return {
        node.name: n
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (n := parameter_count(node)) > MAX_PARAMETERS
    }


def test_no_function_takes_more_than_8_parameters():
    wide = {
        f"{path.relative_to(PACKAGE)}:{name}": n
        for path in _modules()
        for name, n in wide_functions(path.read_text()).items()
    }
    assert wide == {}


def test_the_parameter_count_sees_every_kind_of_parameter():
    source = """
def eight(a, b, /, c, d=1, *args, e, f=2, **kwargs): pass
def nine(a, b, /, c, d=1, *args, e, f=2, g, **kwargs): pass
class C:
    def method(self, a, b, c, d, e, f, g, h): pass
    def wide(self, a, b, c, d, e, f, g, h, i): pass
    @classmethod
    def make(cls, a, b, c, d, e, f, g, h, *, i): pass
async def spread(*args, **kwargs): pass
lam = lambda a, b, c, d, e, f, g, h, i: 0
"""
    assert wide_functions(source) == {"nine": 9, "wide": 9, "make": 9}


def test_the_checks_see_the_whole_package():
    assert len(_modules()) > 60 and (PACKAGE / "distill.py") in _modules()
