"""A griffe extension for the API reference: doctest examples in docstrings become code blocks.

backprop's docstrings are Markdown prose with plain doctest examples (pytest runs them with
--doctest-modules). Markdown would render a `>>>` line as nested block quotes, so each example
(a run of lines from a `>>>` line to the next blank line, as doctest reads it) is wrapped in a
```pycon fence before mkdocstrings renders the docstring. The docstrings themselves stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_FLAGS = re.compile(r"\s*#\s*doctest:.*$")  # `# doctest: +SKIP` and the like: not for readers


def fence_doctests(text: str) -> str:
    """`text` with every doctest example outside a fenced block wrapped in a ```pycon fence."""
    out: list[str] = []
    in_fence = in_example = False
    indent = ""
    for line in text.split("\n"):
        stripped = line.lstrip()
        if in_example and not stripped:
            out.append(indent + "```")
            in_example = False
        if in_example:
            out.append(_FLAGS.sub("", line).replace("<BLANKLINE>", ""))
            continue
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            if out and out[-1].strip():
                out.append("")  # a fence opens a block of its own
            out.append(indent + "```pycon")
            in_example = True
            out.append(_FLAGS.sub("", line))
            continue
        out.append(line)
    if in_example:
        out.append(indent + "```")
    return "\n".join(out)


class DoctestFences(Extension):
    """Wrap the doctest examples of every docstring in ```pycon fences."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
