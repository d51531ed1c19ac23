"""The studio's page of editors, for admins: list, add (a sign-in link is mailed), change a
role, remove (their sessions end). The same operations as `digest editors`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from digest.ops.editors import EditorError, add_editor, list_editors, remove_editor
from digest.storage.access import EditorRole
from digest.web.access import Admin
from digest.web.deps import app_of
from digest.web.pages import render_page
from digest.web.studio_forms import Refused, check_post, set_flash, take_flash

router = APIRouter(prefix="/studio")
Csrf = Annotated[str, Form(max_length=200)]
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@router.get("/editors", response_class=HTMLResponse)
def editors_page(request: Request, who: Admin) -> HTMLResponse:
    app = app_of(request)
    with app.session() as session:
        editors = list_editors(session, app.now())
    context = {
        "who": who,
        "csrf": who.csrf,
        "can_publish": True,
        "editors": editors,
        "flash": take_flash(request),
        "live_version": "",
        "reload_error": None,
    }
    return render_page("studio/editors.html", context, headers=_HEADERS)


@router.post("/editors")
def save_editor(
    request: Request,
    who: Admin,
    csrf: Csrf,
    email: Annotated[str, Form(max_length=320)] = "",
    role: Annotated[str, Form(pattern="^(editor|publisher|admin)$")] = "editor",
) -> Response:
    app = app_of(request)
    back = RedirectResponse("/studio/editors", status_code=303)
    try:
        check_post(request, csrf, who.csrf)
        with app.session() as session:
            editor = add_editor(session, email, EditorRole(role), password=None, now=app.now())
            address = editor.email
    except (Refused, EditorError) as exc:
        set_flash(back, app, "error", str(exc))
        return back
    from digest.web.login import mail_sign_in_link

    mail_sign_in_link(app, address)
    set_flash(back, app, "ok", f"{address} is a {role}; a sign-in link is on its way to them.")
    return back


@router.post("/editors/remove")
def drop_editor(
    request: Request, who: Admin, csrf: Csrf, email: Annotated[str, Form(max_length=320)] = ""
) -> Response:
    app = app_of(request)
    back = RedirectResponse("/studio/editors", status_code=303)
    try:
        check_post(request, csrf, who.csrf)
        if email.strip().lower() == who.email:
            raise EditorError("you cannot remove yourself")
        with app.session() as session:
            remove_editor(session, email)
    except (Refused, EditorError) as exc:
        set_flash(back, app, "error", str(exc))
        return back
    set_flash(back, app, "ok", f"Removed {email}; their sessions are ended.")
    return back
