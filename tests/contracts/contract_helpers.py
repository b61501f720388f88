"""Finding every implementation of a plug point in the package, by reading its source.

Each contract module lists the implementations it runs its contract on; a test compares that list
with what this scan finds, so a new trainer, channel, server update or transform cannot be added
without joining its contract (and a renamed one cannot silently leave it).  The scan parses the
source instead of importing every module (which would load the CLI, plotting and Opacus), so it
costs milliseconds; a class inherits the methods of package classes it derives from by name.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import securefl

PACKAGE_ROOT = Path(securefl.__file__).parent


@dataclass
class _ClassInfo:
    qualname: str
    bases: list[str]
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    is_protocol: bool = False


def _name(node: ast.expr | None) -> str:
    """The last dotted name of an annotation or base (``"Update"`` for ``fl.types.Update``)."""
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.rsplit(".", 1)[-1]
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _walk(tree: ast.AST, prefix: str, *, in_class: bool = False):
    """``(qualname, node, is_method)`` of every class and function, nested ones included
    (closures too)."""
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.ClassDef):
            qualname = f"{prefix}.{node.name}"
            yield qualname, node, False
            yield from _walk(node, qualname, in_class=True)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            qualname = f"{prefix}.{node.name}"
            yield qualname, node, in_class
            yield from _walk(node, f"{qualname}.<locals>")
        elif isinstance(node, ast.If | ast.With | ast.Try):
            yield from _walk(node, prefix, in_class=in_class)


@functools.cache
def _scan() -> tuple[dict[str, _ClassInfo], dict[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    classes: dict[str, _ClassInfo] = {}
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for qualname, node, is_method in _walk(tree, _module_name(path)):
            if isinstance(node, ast.ClassDef):
                bases = [_name(base) for base in node.bases]
                info = _ClassInfo(qualname=qualname, bases=bases, is_protocol="Protocol" in bases)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        info.methods[item.name] = item
                classes[qualname] = info
            elif not is_method:  # methods are read with their class
                functions[qualname] = node
    return classes, functions


def _methods(info: _ClassInfo, by_name: dict[str, list[_ClassInfo]], seen: frozenset[str] = frozenset()):
    """A class's methods with those it inherits from package classes (by base name)."""
    merged: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for base in info.bases:
        for parent in by_name.get(base, []):
            if parent.qualname not in seen:
                merged.update(_methods(parent, by_name, seen | {info.qualname}))
    merged.update(info.methods)
    return merged


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    return [*function.args.posonlyargs, *function.args.args]


ClassTest = Callable[[dict[str, ast.FunctionDef | ast.AsyncFunctionDef]], bool]
FunctionTest = Callable[[ast.FunctionDef | ast.AsyncFunctionDef], bool]


def implementations(*, class_test: ClassTest, function_test: FunctionTest | None = None) -> set[str]:
    """Qualified names of the package's (non-Protocol) classes whose methods pass
    ``class_test``, and of its functions (closures too) that pass ``function_test``."""
    classes, functions = _scan()
    by_name: dict[str, list[_ClassInfo]] = {}
    for info in classes.values():
        by_name.setdefault(info.qualname.rsplit(".", 1)[-1], []).append(info)
    found = {
        qualname
        for qualname, info in classes.items()
        if not info.is_protocol and class_test(_methods(info, by_name))
    }
    if function_test is not None:
        found |= {qualname for qualname, function in functions.items() if function_test(function)}
    return found


def is_trainer(methods) -> bool:
    """:class:`~securefl.fl.types.ClientTrainer`: ``can_train`` and ``train``."""
    return {"can_train", "train"} <= methods.keys()


def is_aggregation(methods) -> bool:
    """:class:`~securefl.fl.types.Aggregation`: ``open_round``, ``client`` and ``aggregate``."""
    return {"open_round", "client", "aggregate"} <= methods.keys()


def is_server_update(methods) -> bool:
    """:class:`~securefl.fl.types.ServerUpdate`: ``__call__(global_params, aggregate)``."""
    call = methods.get("__call__")
    if call is None:
        return False
    parameters = _parameters(call)[1:]
    return len(parameters) == 2 and _name(parameters[1].annotation) == "Aggregate"


def _takes_an_update(parameters: list[ast.arg], returns: ast.expr | None) -> bool:
    return (
        len(parameters) == 1
        and _name(parameters[0].annotation) == "Update"
        and _name(returns) == "Contribution"
    )


def is_transform_class(methods) -> bool:
    """:class:`~securefl.fl.types.UpdateTransform` as a class: ``__call__(update) -> Contribution``."""
    call = methods.get("__call__")
    return call is not None and _takes_an_update(_parameters(call)[1:], call.returns)


def is_transform_function(function) -> bool:
    """:class:`~securefl.fl.types.UpdateTransform` as a function: ``(update: Update) -> Contribution``."""
    return _takes_an_update(_parameters(function), function.returns)


def qualified_name(obj: object) -> str:
    """``module.qualname`` of a class or function, as :func:`implementations` names it."""
    return f"{obj.__module__}.{obj.__qualname__}"
