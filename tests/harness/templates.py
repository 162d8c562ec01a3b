"""Render the Ansible roles' templates exactly as the roles install them.

One source of truth for configuration: the nginx site, the rrsync
``authorized_keys`` lines, ``master.conf`` and ``agent.conf`` are templates in
``roles/<role>/templates/``; the harness renders those same files instead of
keeping copies of its own::

    from harness.templates import render_role_template
    text = render_role_template("master", "master.conf.j2",
                                master_database_host="127.0.0.1", ...)

Rendering follows Ansible's ``template`` module: ``trim_blocks`` on, the
trailing newline kept, no autoescaping. Undefined variables are errors
(``StrictUndefined``), so a template and the harness cannot drift apart
silently: every variable a template uses must be passed, except
``ansible_managed``, which templates read through ``| default(...)``.
Only plain Jinja2 filters are available; role templates must not use
Ansible-only filters (``to_nice_json``, ``regex_replace`` ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLES = REPO_ROOT / "roles"


def role_templates(role: str) -> Path:
    """``roles/<role>/templates`` of this repository."""
    path = ROLES / role / "templates"
    if not path.is_dir():
        raise FileNotFoundError(f"role {role!r} has no templates directory ({path})")
    return path


def render_role_template(role: str, name: str, **variables: Any) -> str:
    """Render ``roles/<role>/templates/<name>`` with ``variables``, as Ansible would."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(role_templates(role))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # configuration files, not HTML
    )
    return env.get_template(name).render(**variables)


def write_role_template(path: Path, role: str, name: str, *, mode: int = 0o644,
                        **variables: Any) -> Path:
    """Render a role template into ``path`` (written to a temporary name, then renamed)."""
    text = render_role_template(role, name, **variables)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)
    return path
