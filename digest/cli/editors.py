"""Editors: `digest editors add|list|remove`, who may sign in to the studio and as what."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from digest.cli.common import console, fail, get_app, print_json

editors_app = typer.Typer(
    help="Studio editors: add (or change), list, remove.", no_args_is_help=True
)

ROLES = ("editor", "publisher", "admin")


@editors_app.command("add")
def add(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The editor's address (their sign-in name).")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="editor: preview, pin, edit, test-send; publisher: also approve and send; "
            "admin: also manage editors.",
        ),
    ] = "editor",
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read a password (at least 12 characters) from standard input; without it the "
            "editor signs in with links mailed to them.",
        ),
    ] = False,
) -> None:
    """Add an editor, or change an existing editor's role (and password)."""
    from digest.ops.editors import EditorError, add_editor
    from digest.storage.access import EditorRole

    if role not in ROLES:
        fail(f"--role: must be one of {', '.join(ROLES)}, not {role!r}")
    password = _read_password() if password_stdin else None
    app = get_app(ctx)
    try:
        with app.session() as session:
            editor = add_editor(session, email, EditorRole(role), password=password, now=app.now())
            address, kind = editor.email, editor.role
    except EditorError as exc:
        fail(str(exc))
    how = "password" if password else "sign-in links"
    console.print(f"{address}: {kind} (signs in with {how})", highlight=False)


@editors_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Every editor with their role and how many sessions they have open."""
    from digest.ops.editors import list_editors

    app = get_app(ctx)
    with app.session() as session:
        editors = list_editors(session, app.now())
    if as_json:
        print_json(
            [
                {"email": e.email, "role": e.role, "password": e.has_password,
                 "created_at": e.created_at.isoformat(), "sessions": e.sessions}
                for e in editors
            ]
        )  # fmt: skip
        return
    if not editors:
        console.print("No editors yet: digest editors add EMAIL --role admin --password-stdin")
    for e in editors:
        login = "password" if e.has_password else "links only"
        console.print(f"{e.email}  {e.role}  {login}  {e.sessions} session(s)", highlight=False)


@editors_app.command("remove")
def remove(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The editor's address.")],
) -> None:
    """Remove an editor and end every session they have."""
    from digest.ops.editors import EditorError, remove_editor

    app = get_app(ctx)
    try:
        with app.session() as session:
            remove_editor(session, email)
    except EditorError as exc:
        fail(str(exc))
    console.print(f"removed {email}; their sessions are ended", highlight=False)


def _read_password() -> str:
    if sys.stdin is None:
        fail("--password-stdin: no standard input")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        fail("--password-stdin: standard input was empty")
    return password


def register(app: typer.Typer) -> None:
    app.add_typer(editors_app, name="editors")
