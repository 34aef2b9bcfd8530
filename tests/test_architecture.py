"""Structure the rest of the suite cannot see: no import cycle inside ``ncis_deploy``, and each export-directory file
name spelled in one module only (so renaming an artifact is a one-line change).

Both read the source, not the imported package: a cycle hidden behind a function-level import is still a cycle
(the day someone hoists the import, it breaks at import time), and nothing has to be imported to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ncis_deploy"


def find_modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``package`` (a package is named by its ``__init__``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node at any depth (functions, try blocks), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch runs
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports: relative imports resolved; ``from pkg import sub``
    counts as importing ``pkg.sub`` when ``sub`` is a module, else as importing ``pkg``; ``import a.b.c`` of a name
    that is no module counts as its nearest enclosing one."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> modules it imports, without a package ``__init__``'s imports of its own submodules.

    Those re-exports are what makes a package a facade (``ncis_deploy`` re-exports ``load_purifier``); Python runs
    the package before any of its submodules anyway, so they add no ordering a submodule could trip on. A cycle that
    needs one of them to close is therefore not counted; any other way back is.
    """
    graph = {}
    for name, path in modules.items():
        deps = imports_of(name, modules)
        if path.name == "__init__.py":
            deps = {d for d in deps if not d.startswith(name + ".")}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out, key=lambda c: (-len(c), c))


def describe(comp: list[str], graph: dict[str, set[str]]) -> str:
    root = comp[0].split(".")[0]
    short = lambda m: m[len(root) + 1:] or root  # noqa: E731
    edges = [f"{short(a)} -> {short(b)}" for a in comp for b in sorted(graph[a]) if b in comp]
    return "{" + ", ".join(map(short, comp)) + "}: " + "; ".join(edges)


def test_the_cycle_check_sees_what_it_should(tmp_path):
    files = {
        "pkg/__init__.py": "from pkg.a import f\n",  # a facade re-export: not an edge
        "pkg/a.py": "from . import b\n",  # relative, from-import of a submodule
        "pkg/b.py": "def g():\n    from .sub.c import h\n",  # inside a function still counts
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from ..a import f\nimport os\n",  # closes a -> b -> c -> a
        "pkg/d.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import e\nelse:\n    import pkg.a.f\n",
        "pkg/e.py": "from pkg import d, f\n",  # d: the module; f: a name of the facade
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = find_modules(tmp_path / "pkg")
    graph = import_graph(modules)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a"}, "pkg.d": {"pkg.a"}, "pkg.e": {"pkg", "pkg.d"}}
    assert imports_of("pkg", modules) == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert describe(cycles(graph)[0], graph) == "{a, b, sub.c}: a -> b; b -> sub.c; sub.c -> a"


def test_no_import_cycle_in_the_package():
    graph = import_graph(find_modules(PACKAGE))
    found = cycles(graph)
    assert not found, "import cycles in ncis_deploy/ (module -> the modules it imports):\n  " + \
        "\n  ".join(describe(c, graph) for c in found)


# The export directory's file names; the module that owns the directory spells them, everyone else asks it.
EXPORT_NAMES = ("manifest.json", "purifier.onnx", "purifier_fp16.onnx", "purifier_int8.onnx", "purifier_classifier.onnx",
                "purifier.engine")


def test_export_file_names_have_one_owner():
    # raw text, as `grep -rl` counts it: docstrings and comments included, so help texts and messages name the
    # files through the owner's constants too
    where = {name: sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                          if name in p.read_text(encoding="utf-8")) for name in EXPORT_NAMES}
    owners = {files[0] for files in where.values() if len(files) == 1}
    assert all(len(files) == 1 for files in where.values()) and len(owners) == 1, \
        "each export file name must appear in exactly one module of ncis_deploy/, the same for all:\n  " + \
        "\n  ".join(f"{name}: {', '.join(files) or 'nowhere'}" for name, files in where.items())
