"""The chat template of a GGUF, checked before an engine renders it (docs/verification.md, "Before an engine loads
a model").

A chat template is a Jinja program the engine runs on every request. Parsed here with Jinja's sandboxed
environment (never rendered), its syntax tree is walked: what a chat template needs is its variables
(``messages``, ``bos_token``, ``add_generation_prompt``, ``tools``…), loops, tests, filters and string methods.
What a server-side template injection needs (the CVE-2024-34359 class: ``__class__.__mro__``,
``__subclasses__()``, ``cycler.__init__.__globals__``, ``lipsum.__globals__``) is refused, naming the construct:
an attribute or item whose name starts with ``_``, Python's introspection attributes, Jinja's globals that hold
a function's namespace (``lipsum``, ``cycler``, ``joiner``, ``self``), the ``attr`` filter (an attribute named by
a string), and a template that does not parse at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: attributes that reach a function's code, frame or globals without a leading underscore
INTROSPECTION = frozenset(
    {
        "mro",
        "func_globals",
        "func_code",
        "func_closure",
        "gi_frame",
        "gi_code",
        "cr_frame",
        "ag_frame",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_back",
        "tb_frame",
        "co_code",
        "im_func",
    }
)
#: Jinja's default globals that are Python objects with a namespace, and the template's own reference
UNSAFE_NAMES = frozenset({"lipsum", "cycler", "joiner", "self", "config", "request", "url_for", "g", "session"})
UNSAFE_FILTERS = frozenset({"attr"})
#: no chat template is longer (real ones are a few KiB)
MAX_TEMPLATE_CHARS = 1 << 20


def template_problems(template: str) -> list[str]:
    """What is wrong with ``template`` (empty: it may be rendered); each names the construct."""
    if len(template) > MAX_TEMPLATE_CHARS:
        return [f"the template is longer than {MAX_TEMPLATE_CHARS} characters"]
    from jinja2 import TemplateSyntaxError, nodes  # noqa: PLC0415  # heavy: jinja2, only to check a template
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415  # heavy: jinja2, as above

    try:
        tree = ImmutableSandboxedEnvironment().parse(template)
    except TemplateSyntaxError as exc:
        return [f"the template does not parse (line {exc.lineno}: {str(exc)[:120]})"]
    problems: list[str] = []
    for node in _walk(tree, nodes.Node):
        found = _unsafe(node, nodes)
        if found and found not in problems:
            problems.append(found)
    return problems[:8]


def _walk(node: Any, base: type) -> Iterator[Any]:
    yield node
    for child in node.iter_child_nodes():
        if isinstance(child, base):
            yield from _walk(child, base)


def _unsafe(node: Any, nodes: Any) -> str | None:
    if isinstance(node, nodes.Getattr):
        return _name_problem(str(node.attr), f".{node.attr}", node.lineno)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return _name_problem(node.arg.value, f"[{node.arg.value!r}]", node.lineno)
    if isinstance(node, nodes.Name) and node.name in UNSAFE_NAMES:
        return f"line {node.lineno}: uses {node.name!r}, a Python object chat templates have no use for"
    if isinstance(node, nodes.Filter) and node.name in UNSAFE_FILTERS:
        return f"line {node.lineno}: the |{node.name} filter reaches attributes by name"
    return None


def _name_problem(name: str, shown: str, line: int) -> str | None:
    if name.startswith("_"):
        return f"line {line}: reaches {shown[:60]} (a private or special attribute)"
    if name in INTROSPECTION:
        return f"line {line}: reaches {shown[:60]} (Python introspection)"
    return None
