"""The layout shows the architecture: data flows corpus -> components -> eval, never back.

Read with `ast` (nothing is imported or run): every module's imports, the notebooks' code cells."""
import ast
import importlib
import inspect
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "nanosdm"


def module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree, name, is_package=False):
    """Every nanosdm module a module imports, at any depth (a function's own imports included)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: from the module's own package
                base = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return out


def graph():
    """{module: the nanosdm modules it imports}."""
    paths = {module_name(p): p for p in PKG.rglob("*.py")}
    g = {}
    for name, path in paths.items():
        deps = imports_of(ast.parse(path.read_text()), name, path.name == "__init__.py")
        g[name] = {d for d in deps if d in paths and d != name and not name.startswith(d + ".")}
    return g


def is_eval(name):
    return name == "nanosdm.eval" or name.startswith("nanosdm.eval.")


def find_cycle(g):
    """One import circle as a list of modules, or None (depth-first search, three colours)."""
    colour, stack = {}, []

    def visit(n):
        colour[n] = "grey"
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if colour.get(d) == "grey":
                return stack[stack.index(d):] + [d]
            if d not in colour:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        colour[n] = "black"
        return None

    for n in sorted(g):
        if n not in colour:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_circle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_nothing_below_the_evaluation_imports_it():
    wrong = {n: sorted(d for d in deps if is_eval(d)) for n, deps in graph().items() if not is_eval(n)}
    assert not {n: d for n, d in wrong.items() if d}, "components and corpus must not import nanosdm.eval"


def test_the_checks_can_fail():
    """The two checks above on made-up graphs: a circle and an upward import are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("from nanosdm.eval import metrics\nfrom . import ctc\n")
    assert {"nanosdm.eval.metrics", "nanosdm.ctc"} <= imports_of(tree, "nanosdm.judge")


def test_the_three_folders_hold_their_roles():
    """Components in nanosdm/, where speech comes from in corpus/, measurement in eval/."""
    names = {module_name(p) for p in PKG.rglob("*.py")}
    for m in ("transformer", "tokenizer", "textlm", "kmeans", "units", "codec", "asr", "ctc", "dualstream",
              "depth", "vocoder", "omni", "dpo", "utils", "live", "judge"):
        assert f"nanosdm.{m}" in names
    for m in ("audio", "espeak", "spokenworld", "speech", "realdata"):
        assert f"nanosdm.corpus.{m}" in names
    for m in ("metrics", "dialogue", "duplex", "omni", "dpo"):
        assert f"nanosdm.eval.{m}" in names


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_cells_compile_and_their_nanosdm_names_exist(path):
    """No test runs the notebooks (minutes each); a move must not break them silently: every code
    cell compiles, every `from nanosdm... import name` names a module or attribute that exists, and
    every `module.name` read from an imported nanosdm module exists."""
    nb = json.loads(path.read_text())
    modules = {}    # local name -> nanosdm module, over all cells (a later cell uses an earlier import)
    trees = []
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        src = "".join(cell["source"])
        # IPython's magics and shell lines are not Python
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        tree = compile(src, f"{path.name}[{i}]", "exec", ast.PyCF_ONLY_AST)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nanosdm":
                mod = importlib.import_module(node.module)
                for a in node.names:
                    assert hasattr(mod, a.name) or importlib.util.find_spec(f"{node.module}.{a.name}"), \
                        f"{path.name}: {node.module} has no {a.name}"
                    value = getattr(mod, a.name, None) or importlib.import_module(f"{node.module}.{a.name}")
                    if inspect.ismodule(value):
                        modules[a.asname or a.name] = value
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "nanosdm":
                        importlib.import_module(a.name)
        trees.append(tree)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                assert hasattr(modules[node.value.id], node.attr), f"{path.name}: {node.value.id}.{node.attr} does not exist"
