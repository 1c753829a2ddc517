"""The JSON API under ``/api/v1``, for bots and scripts (``Authorization: Bearer <token>``).

Annotators: ``me``, ``tasks/next``, ``assignments/ID`` (+ ``/label``, ``/skip``, ``/clip/N``),
``progress``. Admins also: ``items`` (import), ``items/labels``, ``items/close``, ``users``, ``export``,
``stats``, ``users/NAME/deactivate|activate|rotate-token|reset-password``. See docs/api.md.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from alignkit.app.auth import bearer_admin, bearer_user
from alignkit.app.bodies import json_body
from alignkit.app.clips import clip_response
from alignkit.app.context import context
from alignkit.app.errors import HTTPProblem
from alignkit.app.pages import jsonl_response
from alignkit.data.records import record_to_dict
from alignkit.feedback.exports import json_safe
from alignkit.feedback.values import Task

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")


# ---------------------------------------------------------------------- annotators


@router.get("/me")
def me(request: Request):
    user = bearer_user(request)
    return {
        "name": user.name,
        "role": user.role,
        "group": user.group,
        "project": context(request).project,
    }


@router.get("/tasks/next")
def next_task(request: Request):
    c = context(request)
    task = c.store.next_task(c.project, bearer_user(request))
    if task is None:
        return Response(status_code=204)
    return task_json(task)


def task_json(task: Task) -> dict:
    """The task, plus for a video pair the URLs of its clips (in display order)."""
    out = task.to_json()
    if task.type == "video_pair":
        base = f"/api/v1/assignments/{task.assignment_id}/clip"
        out["clips"] = [f"{base}/{i}" for i in range(len(task.responses))]
    return out


@router.get("/assignments/{assignment_id}")
def assignment(request: Request, assignment_id: int):
    c = context(request)
    return task_json(c.store.task(assignment_id, bearer_user(request), project=c.project))


@router.get("/assignments/{assignment_id}/clip/{position}")
def clip(request: Request, assignment_id: int, position: int):
    user = bearer_user(request)
    c = context(request)
    content_type, data = c.store.clip(assignment_id, user, position, project=c.project)
    return clip_response(request, content_type, data)


@router.post("/assignments/{assignment_id}/label")
async def label(request: Request, assignment_id: int):
    c = context(request)
    user = await run_in_threadpool(bearer_user, request)
    body = await json_body(request)
    result = await run_in_threadpool(
        c.store.record_vote, assignment_id, user, body, project=c.project
    )
    return JSONResponse(
        {"vote_id": result.vote_id, "duplicate": result.duplicate},
        status_code=200 if result.duplicate else 201,
    )


@router.post("/assignments/{assignment_id}/skip")
def skip(request: Request, assignment_id: int):
    c = context(request)
    c.store.skip(assignment_id, bearer_user(request), project=c.project)
    return {"skipped": assignment_id}


@router.get("/progress")
def progress(request: Request):
    c = context(request)
    return c.store.progress(c.project, bearer_user(request))


# ---------------------------------------------------------------------- admins


@router.post("/items")
async def add_items(request: Request):
    await run_in_threadpool(bearer_admin, request)
    c = context(request)
    body = await json_body(request)
    entries = body.get("items")
    if not isinstance(entries, list):
        raise HTTPProblem(422, "expected {'items': [...], 'gold': false}")
    gold = body.get("gold", False)
    if not isinstance(gold, bool):
        raise HTTPProblem(422, "field 'gold': expected true or false")
    result = await run_in_threadpool(c.store.add_items, c.project, entries, gold=gold)
    return JSONResponse(
        {"added": result.added, "skipped": result.skipped, "item_ids": result.item_ids}, 201
    )


async def _item_ids(request: Request) -> list[int]:
    """The body's ``ids``: a list of item ids (integers), else 422."""
    ids = (await json_body(request)).get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise HTTPProblem(422, "expected {'ids': [item id, ...]}")
    return ids


@router.post("/items/labels")
async def item_labels(request: Request):
    await run_in_threadpool(bearer_admin, request)
    c = context(request)
    ids = await _item_ids(request)
    labels = await run_in_threadpool(c.store.item_labels, c.project, ids)
    return {"labels": {str(k): record_to_dict(v) for k, v in labels.items()}}


@router.post("/items/close")
async def close_items(request: Request):
    """Close items (their round took its labels): no longer offered, labels final (admin)."""
    await run_in_threadpool(bearer_admin, request)
    c = context(request)
    ids = await _item_ids(request)
    return {"closed": await run_in_threadpool(c.store.close_items, c.project, ids)}


@router.post("/users")
async def add_user(request: Request):
    """A new account, a member of the served project (admin)."""
    await run_in_threadpool(bearer_admin, request)
    c = context(request)
    body = await json_body(request)
    for name, want in (("name", str), ("role", str), ("password", bool)):
        if name in body and not isinstance(body[name], want):
            raise HTTPProblem(422, f"field '{name}': expected {want.__name__}")
    if not isinstance(body.get("name"), str):
        raise HTTPProblem(422, "field 'name': missing (expected the user's login name)")
    new = await run_in_threadpool(
        lambda: c.store.add_user(
            body["name"],
            role=body.get("role", "annotator"),
            group=body.get("group"),
            password=body.get("password", False),
            token=True,
            projects=[c.project],
        )
    )
    return JSONResponse(
        {
            "name": new.user.name,
            "role": new.user.role,
            "group": new.user.group,
            "token": new.token,
            "password": new.password,
        },
        201,
    )


@router.post("/users/{name}/deactivate")
def deactivate(request: Request, name: str):
    """End an account's access at once: its token, password and sessions stop working."""
    bearer_admin(request)
    context(request).store.set_active(name, False)
    return {"name": name, "active": False}


@router.post("/users/{name}/activate")
def activate(request: Request, name: str):
    bearer_admin(request)
    context(request).store.set_active(name, True)
    return {"name": name, "active": True}


@router.post("/users/{name}/rotate-token")
def rotate_token(request: Request, name: str):
    """A new API token (shown once); the old one and the account's sessions end."""
    bearer_admin(request)
    return {"name": name, "token": context(request).store.rotate_token(name)}


@router.post("/users/{name}/reset-password")
def reset_password(request: Request, name: str):
    """A new one-time password (shown once); the old one and the account's sessions end."""
    bearer_admin(request)
    return {"name": name, "password": context(request).store.reset_password(name)}


@router.get("/export")
def export(request: Request, format: str = "raw"):
    bearer_admin(request)
    return jsonl_response(context(request), format)


@router.get("/stats")
def stats(request: Request):
    bearer_admin(request)
    c = context(request)
    return json_safe(c.store.stats(c.project))
