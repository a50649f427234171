"""The Jinja2 environment every template renders in (templates/, the same options for all)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._resources import template_dir

if TYPE_CHECKING:
    import jinja2


def template_environment() -> jinja2.Environment:
    """A Jinja2 environment over templates/: strict undefined names, no autoescape, blocks trimmed."""
    # Imported here: only generating a module needs Jinja2, and a compile that finds its
    # module in the disk cache should not pay for the import.
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
                              autoescape=False)
