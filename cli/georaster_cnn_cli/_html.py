"""``--html FILE``: a command's report, exactly as printed, as a standalone HTML page.

The tables are those the command prints on stdout, rendered once more on a
recording console and exported by rich (one renderer, two media); the page is
written under a temporary name and renamed into place by the library's staging.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

__all__ = ["write_html"]

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
{{stylesheet}}
body {{{{ color: {{foreground}}; background-color: {{background}};
        font-family: sans-serif; margin: 1.5em; }}}}
pre {{{{ font-family: Menlo, 'DejaVu Sans Mono', consolas, 'Courier New', monospace;
        font-size: 13px; line-height: 1.3; }}}}
</style>
</head>
<body>
<h1>{title}</h1>
<pre><code>{{code}}</code></pre>
{extra}
<p><small>written by georaster-cnn</small></p>
</body>
</html>
"""


def write_html(
    path: Path,
    title: str,
    render: Callable[[Console], None],
    *,
    extra: str = "",
    overwrite: bool = True,
) -> Path:
    """Write what ``render(console)`` prints as the HTML page ``path``.

    Parameters
    ----------
    path
        The page to write (its folder is created).
    title
        Heading and title of the page (escaped here).
    render
        Prints the report on the console it is given.
    extra
        HTML placed after the report (trusted: built by the caller, e.g. an ``<img>``).
    overwrite
        Replace a page that exists.
    """
    from georaster_cnn.io.staging import atomic_write

    console = Console(
        record=True, file=io.StringIO(), width=120, force_terminal=True, color_system="truecolor"
    )
    render(console)
    safe = html.escape(title).replace("{", "{{").replace("}", "}}")
    page = console.export_html(
        code_format=_PAGE.format(title=safe, extra=extra.replace("{", "{{").replace("}", "}}")),
        inline_styles=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: f.write(page.encode("utf-8")), overwrite=overwrite)
