"""YAML that cannot blow up: the one loader for flow specs and YAML given on the command line.

``yaml.safe_load`` builds shared objects for aliases, so a "billion laughs" document (9 anchors, each
a list of 9 aliases of the previous one) loads quickly but is 9⁹ nodes to anything that walks it
(validation, ``save``, JSON) — gigabytes and minutes. :func:`load` composes the node graph first,
counts the nodes it expands to (aliases included, memoised per node), and refuses a document that
expands past ``max_nodes``; it also refuses text over ``max_bytes``. Both limits are named in the
error, with what to do.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import SpecError, SpecSyntaxError

__all__ = ["load", "MAX_SPEC_BYTES", "MAX_SPEC_NODES"]

#: a flow spec larger than this is refused (python steps carry source text: 4 MiB is generous)
MAX_SPEC_BYTES = 4 * 1024 * 1024
#: nodes a spec may expand to, aliases expanded
MAX_SPEC_NODES = 200_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the tree ``root`` expands to (aliases expanded); stops counting past ``limit``."""
    memo: dict[int, int] = {}
    # iterative post-order walk (a deep document must not hit Python's recursion limit)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in memo:
            continue
        if isinstance(node, yaml.ScalarNode):
            memo[key] = 1
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            total = 1
            for c in children:
                total += memo.get(id(c), 1)
                if total > limit:
                    break
            memo[key] = min(total, limit + 1)
            continue
        memo_pending = [c for c in children if id(c) not in memo]
        if not memo_pending:
            stack.append((node, True))
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in memo_pending)
    return memo[id(root)]


def load(text: str, *, source: str = "spec", max_bytes: int = MAX_SPEC_BYTES,
         max_nodes: int = MAX_SPEC_NODES) -> Any:
    """Parse ``text`` (one YAML document) with the safe loader, within the limits above.
    Raises SpecSyntaxError (invalid YAML) or SpecError (a limit)."""
    size = len(text.encode("utf-8", "surrogatepass")) if len(text) * 4 > max_bytes else len(text)
    if size > max_bytes:
        raise SpecError(f"{source}: the spec is {size:,} bytes, over the limit of {max_bytes:,} bytes; "
                        f"keep large data out of the spec (read it from a file or a table)")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, max_nodes)
        if n > max_nodes:
            raise SpecError(f"{source}: the YAML expands to more than {max_nodes:,} nodes once its aliases "
                            f"(*name) are expanded; a spec this large is refused (an alias bomb?) — "
                            f"write the values out or use fewer nested aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecSyntaxError(f"{source}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}; "
                              f"fix the YAML (indentation, quotes) and try again") from None
    finally:
        loader.dispose()
