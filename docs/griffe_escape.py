"""A griffe extension for the docs build (mkdocs.yml): docstrings here are plain prose, where `part-<shard>-<seq>` or
`random:<preset>` means a placeholder, but Markdown reads `<shard>` as an HTML tag and drops it. Outside code spans
and indented blocks, `<` becomes `&lt;`, so the reference shows what the docstring says."""

from __future__ import annotations

import re

import griffe

_TAG = re.compile(r"<(?=[A-Za-z/!])")  # "<" that Markdown would start an HTML tag with ("a < b" is already text)


def _escape_line(line: str) -> str:
    parts = line.split("`")
    parts[::2] = [_TAG.sub("&lt;", part) for part in parts[::2]]  # even pieces lie outside `code spans`
    return "`".join(parts)


def escape(text: str) -> str:
    """`text` with every tag-like "<" outside code escaped; indented lines (code blocks) and fenced blocks kept."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append(line if fenced or line.startswith("    ") else _escape_line(line))
    return "\n".join(out)


class EscapePlaceholders(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape(obj.docstring.value)
