"""The review dashboard's pages: server-rendered Jinja2 templates (autoescaped: customer text is
untrusted) with a little vanilla JS (``api/static/dashboard.js``) that calls the JSON API with the
session cookie.

Pages need the session cookie handed out by the login page (``api.deps``); without it they redirect
to ``/dashboard/login``. Each page names the least role it needs (``api.deps.allow``) and shows only the assistants
the user sees; controls the user's role may not use are left out (templates ask ``can(role)``). The list,
metrics and improve pages share the review filters, kept in the URL (``channel``, ``assistant_id``, ``since``,
``until``, ``customer``, ``waiting_for_human``, ``feedback``) so a view can be bookmarked and the export links
carry the same selection.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select

from api import i18n, labels, scopes
from api.deps import (
    MAX_OFFSET, PRINCIPAL, SESSION_COOKIE, AuthFailed, CurrentUser, ServicesDep, SessionDep, allow, bearer_principal, same_origin,
    session_principal, set_actor, throttled,
)
from api.routes import conversations as conversation_routes
from api.routes import documents as document_routes
from api.routes import regression as regression_routes
from api.routes import review as review_routes
from api.routes import websites as website_routes
from api.routes import whatsapp as whatsapp_routes
from api.sessions import SESSION_TTL_S, close_session, open_session
from core.errors import Forbidden, InvalidRequest, NotFound
from kb import registry
from runtime import approved, followups, regression, store
from runtime.accounts import users
from runtime.accounts.roles import SUPERVISOR, VIEWER, Principal
from runtime.approved_index import APPROVED_PREFIX
from runtime.feedback import REASONS
from runtime.models import CHANNELS, Message
from runtime.review.conversations import collected_data, list_conversations
from runtime.review.filters import ConversationFilters
from runtime.review.metrics import compute_metrics
from runtime.review.queue import handoff_queue
from runtime.whatsapp.models import WhatsAppSender
from runtime.whatsapp.outbound import window_open

PAGE_SIZE = 25
FILTER_KEYS = ("channel", "assistant_id", "since", "until", "customer", "waiting_for_human", "feedback")
CHANNEL_LABELS = labels.CHANNELS

_env = Environment(loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
                   autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
templates = Jinja2Templates(env=_env)


def _millis(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms" if value < 1000 else f"{i18n.number(value / 1000, 1)} s"


def _duration(seconds: float | None) -> str:
    """A wait, to the minute once it is one: ``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    if seconds is None:
        return "–"
    seconds = max(int(seconds), 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 60:
        return f"{seconds} s"
    if hours < 1:
        return f"{minutes} min"
    return f"{hours} h {minutes % 60:02d} min" if days < 1 else f"{days} d {hours % 24} h"


def _pretty(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


i18n.install(_env)
_env.filters.update(ms=_millis, pretty=_pretty, duration=_duration, t=i18n.gettext,
                    label=labels.label, reason_text=labels.feedback_reason_text)
_env.globals.update(channel_labels=CHANNEL_LABELS, channels=CHANNELS)


class LoginRequired(Exception):
    """Raised by page dependencies; the handler in ``install_page_handlers`` redirects to the login page."""

    def __init__(self, next_path: str):
        self.next_path = next_path


def require_page_session(request: Request, services: ServicesDep) -> None:
    """Pages need the session cookie of an active user; otherwise the browser is sent to the login page. A form
    posted from another site is refused."""
    principal = session_principal(request, services)
    if principal is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(path)
    if request.method != "GET" and not same_origin(request):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    set_actor(request, principal)


def install_page_handlers(app) -> None:
    """Redirect ``LoginRequired`` to the login page, remembering where the user was going; a page the user may not
    see answers 403 with the error page (the API's 403 stays JSON)."""
    async def to_login(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/dashboard/login?next={quote(exc.next_path, safe='')}", status_code=303)

    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if request.url.path.startswith("/dashboard"):
            _ = i18n.translator(request)
            return render(request, "error.html", status_code=403, title=_("Not allowed"),
                          message=_("Your account may not do this: %(reason)s", reason=exc))
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    app.add_exception_handler(LoginRequired, to_login)
    app.add_exception_handler(Forbidden, forbidden)


public = APIRouter(prefix="/dashboard", include_in_schema=False)
router = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(require_page_session)])


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    """Render a template with the request (for the navigation's active link), the signed-in user (``me``) and
    ``can(role)``, which the templates ask before showing a control, in the reader's language."""
    me: Principal | None = getattr(request.state, PRINCIPAL, None)
    context.update(me=me, can=lambda role: me is not None and me.can(role))
    with i18n.using(i18n.request_locale(request)):
        response = templates.TemplateResponse(request, name, context, status_code=status_code)
        response.headers["Content-Language"] = i18n.html_lang()
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response


def _safe_next(value: str | None) -> str:
    """Only paths inside the dashboard: never an open redirect to another site."""
    if value and value.startswith("/dashboard/") and not value.startswith("/dashboard//") and "\\" not in value:
        return value
    return "/dashboard/conversations"


# --------------------------------------------------------------------------- login


@public.get("/login")
def login_page(request: Request, services: ServicesDep, next: str | None = None):
    """The login form (already signed in: straight to where the user was going)."""
    if session_principal(request, services) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", next=_safe_next(next))


def _sign_in(db, services, email: str, password: str) -> Principal | None:
    """The user of an e-mail and password; the admin token as the password (no e-mail, or the bootstrap admin's)
    signs in the bootstrap admin."""
    if not email or email.strip().lower() == users.bootstrap_admin(db).email:
        principal = bearer_principal(db, services.settings, password)
        if principal is not None and principal.via == "admin token":
            return principal
    user = users.check_password(db, email, password) if email else None
    if user is None:
        return None
    db.commit()  # a hash made with older parameters was replaced
    return users.principal_of(user, "session")


@public.post("/login")
def login(request: Request, services: ServicesDep, email: Annotated[str, Form(max_length=254)] = "",
          password: Annotated[str, Form(max_length=1024)] = "", token: Annotated[str, Form(max_length=1024)] = "",
          next: Annotated[str | None, Form()] = None):
    """Exchange an e-mail and password (or the admin token: ``password``, or ``token`` for scripts) for a session
    cookie; wrong ones get 401, then 429 with growing waits."""
    if not same_origin(request):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    _ = i18n.translator(request)
    try:
        principal = throttled(request, services, lambda db: _sign_in(db, services, email, password or token))
    except AuthFailed as exc:
        if exc.retry_after:
            page = render(request, "login.html", status_code=429, next=_safe_next(next), email=email,
                          error=_("Too many failed attempts. Try again in %(seconds)s s.", seconds=exc.retry_after))
            page.headers["Retry-After"] = str(exc.retry_after)
            return page
        return render(request, "login.html", status_code=401, next=_safe_next(next), email=email,
                      error=_("Wrong e-mail or password."))
    with services.session() as db:
        value = open_session(db, services.settings, principal.user_id, client=request.client.host if request.client else "",
                             user_agent=request.headers.get("user-agent", ""))
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_TTL_S,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@public.post("/logout")
def logout(request: Request, services: ServicesDep):
    """End the session (server-side: a copy of the cookie stops working too) and forget the cookie."""
    if not same_origin(request):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    with services.session() as db:
        close_session(db, services.settings, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@public.post("/language")
def choose_language(request: Request, lang: Annotated[str, Form(max_length=20)] = "",
                    next: Annotated[str | None, Form(max_length=4000)] = None):
    """The header's language switch: the choice kept in a cookie (a year), then back to the page."""
    if not same_origin(request):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    if lang not in i18n.LOCALES:
        raise HTTPException(status_code=400, detail=f"unknown language; one of {', '.join(i18n.LOCALES)}")
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(i18n.LANG_COOKIE, lang, max_age=i18n.LANG_COOKIE_MAX_AGE_S, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/")
    return response


@public.get("")
@public.get("/")
def home() -> Response:
    return RedirectResponse("/dashboard/conversations", status_code=303)


# --------------------------------------------------------------------------- filters


def read_filters(request: Request) -> tuple[dict[str, str], ConversationFilters | None, str | None]:
    """(raw filter values for the form and links, parsed filters or None, error message or None); the filters
    kept to the assistants the user sees."""
    raw = {k: request.query_params.get(k, "").strip() for k in FILTER_KEYS}
    waiting = raw["waiting_for_human"].lower()
    try:
        if waiting not in ("", "true", "false"):
            raise InvalidRequest(f"waiting_for_human: {raw['waiting_for_human']!r} is not true or false")
        filters = ConversationFilters.parse(
            channel=raw["channel"], assistant_id=raw["assistant_id"], since=raw["since"], until=raw["until"],
            customer=raw["customer"], waiting_for_human={"true": True, "false": False}.get(waiting),
            feedback=raw["feedback"])
    except InvalidRequest as exc:  # the reason names the parameter, as the API's 400 does
        _ = i18n.translator(request)
        return raw, None, _("These filters cannot be applied: %(reason)s", reason=exc)
    return raw, review_routes.visible_to(getattr(request.state, PRINCIPAL), filters), None


def query_string(raw: dict[str, str], **changes) -> str:
    """The filters (plus ``changes``) as a query string, empty values left out."""
    values = {**raw, **{k: str(v) for k, v in changes.items()}}
    return urlencode({k: v for k, v in values.items() if v})


def visible_assistants(session, principal: Principal) -> list:
    """The assistants the user sees, oldest first."""
    return principal.visible(registry.list_assistants(session), key="id")


def _filter_page(request: Request, session, name: str, status_code: int = 200, **context) -> HTMLResponse:
    raw = context.pop("raw")
    return render(request, name, status_code=status_code, raw=raw, qs=query_string(raw),
                  assistants=visible_assistants(session, getattr(request.state, PRINCIPAL)), **context)


# --------------------------------------------------------------------------- conversations


@router.get("/conversations", dependencies=[allow(VIEWER)])
def conversations_page(request: Request, session: SessionDep, page: int = 1):
    """The conversation list with filters, pagination and export links."""
    raw, filters, error = read_filters(request)
    if filters is None:
        return _filter_page(request, session, "conversations.html", 400, raw=raw, error=error, items=[], total=0,
                            page=1, pages=1)
    page = min(max(page, 1), MAX_OFFSET // PAGE_SIZE)  # a page past the last is an empty page, never an overflow
    total, items = list_conversations(session, filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    pages = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    return _filter_page(request, session, "conversations.html", raw=raw, items=items, total=total, page=page,
                        pages=pages, prev_qs=query_string(raw, page=page - 1) if page > 1 else None,
                        next_qs=query_string(raw, page=page + 1) if page < pages else None)


@router.get("/conversations/{conversation_id}", dependencies=[allow(VIEWER, scopes.conversation)])
def conversation_page(request: Request, conversation_id: str, services: ServicesDep, session: SessionDep):
    """One conversation: the thread with sources and function calls, its variables and the actions."""
    try:
        conv = conversation_routes.get_conversation(conversation_id, session)
    except NotFound:
        _ = i18n.translator(request)
        return render(request, "error.html", status_code=404, title=_("Conversation not found"),
                      message=_("No conversation has the id %(id)s.", id=conversation_id))
    row = store.get_conversation(session, conversation_id)
    templates_offered, sender_id, window = [], None, None
    if conv.channel == "whatsapp":
        window = window_open(row, services.clock())
        sender = session.query(WhatsAppSender).filter_by(phone_number_id=conv.sender).one_or_none()
        if sender is not None:
            sender_id = sender.id
            templates_offered = [t for t in whatsapp_routes.templates_of(session, sender.id) if t.status == "APPROVED"]
    assistant = registry.get_assistant(session, conv.assistant_id)
    return render(request, "conversation.html", conv=conv, assistant=assistant,
                  collected=collected_data(session, conversation_id), window_open=window,
                  sender_id=sender_id, wa_templates=templates_offered, reviews=reply_reviews(session, conv, assistant),
                  reasons=REASONS, followups=followups.list_followups(session, conversation_id=conversation_id))


@router.get("/queue", dependencies=[allow(VIEWER)])
def queue_page(request: Request, services: ServicesDep, session: SessionDep, principal: CurrentUser,
               assistant_id: str = "", channel: str = ""):
    """The "waiting for a human" queue (``runtime.review.queue``): who waits, for how long and why, with the
    hand-back and close actions."""
    if channel and channel not in CHANNELS:
        _ = i18n.translator(request)
        return render(request, "error.html", status_code=400, title=_("Unknown type"),
                      message=_("There is no conversation type %(channel)s.", channel=repr(channel)))
    q = review_routes.visible_queue(principal, handoff_queue(session, services.clock(), assistant_id=assistant_id or None,
                                                             channel=channel or None), assistant_id)
    return render(request, "queue.html", q=q, assistants=visible_assistants(session, principal),
                  assistant_id=assistant_id, channel=channel)


def reply_reviews(session, conv, assistant) -> dict[str, dict]:
    """What the review actions of each AI reply of ``conv`` need, by message id: the question it answered,
    the approved answer it was sent from (if any), the approved answer and regression case already made
    of it, and its knowledge-base documents (the sources an approved answer made of it keeps)."""
    replies = session.scalars(select(Message).where(Message.conversation_id == conv.id, Message.direction == "outbound",
                                                    Message.turn_id.is_not(None)))
    questions = regression.reply_questions(session, replies)
    approved_ids = {a.question_key: a.id for a in approved.list_answers(session, assistant)}
    cases = {c.created_from_message_id: c.id for c in regression.list_cases(session, assistant)}
    reviews = {}
    for m in conv.messages:
        if m.id not in questions:
            continue
        documents: dict[str, dict] = {}
        for s in m.sources:
            if not s["chunk_id"].startswith(APPROVED_PREFIX):
                documents.setdefault(s["document_id"], {k: s[k] for k in approved.SOURCE_KEYS})
        sent_from = next((s["document_id"] for s in m.sources if s["chunk_id"].startswith(APPROVED_PREFIX)), None)
        reviews[m.id] = {"question": questions[m.id], "sent_from": sent_from, "case_id": cases.get(m.id),
                         "approved_id": approved_ids.get(approved.question_key(questions[m.id])),
                         "sources": list(documents.values())}
    return reviews


# --------------------------------------------------------------------------- metrics and insights


@router.get("/metrics", dependencies=[allow(VIEWER)])
def metrics_page(request: Request, session: SessionDep):
    """The review figures and a per-day chart, under the list's filters."""
    raw, filters, error = read_filters(request)
    if filters is None:
        return _filter_page(request, session, "metrics.html", 400, raw=raw, error=error, m=None, chart=None)
    m = compute_metrics(session, filters)
    return _filter_page(request, session, "metrics.html", raw=raw, m=m, chart=day_chart(m["per_day"]))


def day_chart(per_day: list[dict], width: int = 720, height: int = 200) -> dict:
    """Geometry of the per-day SVG chart: a bar per day for messages, a narrower one for replies."""
    top = max((d["messages"] for d in per_day), default=0) or 1
    pad_left, pad_bottom, pad_top = 36, 28, 10
    inner_h = height - pad_bottom - pad_top
    slot = (width - pad_left) / max(len(per_day), 1)
    days = []
    for i, d in enumerate(per_day):
        center = pad_left + (i + 0.5) * slot
        bar = max(min(slot * 0.7, 48), 2)
        mh, rh = inner_h * d["messages"] / top, inner_h * d["replies"] / top
        days.append({**d, "x": round(center - bar / 2, 1), "w": round(bar, 1), "mh": round(mh, 1),
                     "my": round(pad_top + inner_h - mh, 1), "rx": round(center - bar / 4, 1),
                     "rw": round(bar / 2, 1), "rh": round(rh, 1), "ry": round(pad_top + inner_h - rh, 1),
                     "label_x": round(center, 1)})
    label_every = max(len(days) // 12, 1)
    return {"width": width, "height": height, "top": top, "days": days, "label_every": label_every,
            "base_y": pad_top + inner_h, "top_y": pad_top, "pad_left": pad_left}


@router.get("/improve", dependencies=[allow(VIEWER)])
def improve_page(request: Request, session: SessionDep):
    """Question clusters and knowledge gaps, fetched by the browser from ``/api/insights``."""
    raw, filters, error = read_filters(request)
    return _filter_page(request, session, "improve.html", 400 if error else 200, raw=raw, error=error)


# --------------------------------------------------------------------------- knowledge base and console


def assistant_not_found(request: Request, assistant_id: str | None) -> HTMLResponse:
    """The 404 page of an assistant picker given an id or name that matches none."""
    _ = i18n.translator(request)
    return render(request, "error.html", status_code=404, title=_("Assistant not found"),
                  message=_("No assistant has the id or name %(id)s.", id=assistant_id))


def _pick_assistant(session, principal: Principal, assistant_id: str | None):
    """(the assistants the user sees, the one ``assistant_id`` names or else the first); 403 for one not seen."""
    assistants = visible_assistants(session, principal)
    if assistant_id:
        assistant = registry.get_assistant(session, assistant_id)
        principal.require_assistant(assistant.id)
        return assistants, assistant
    return assistants, assistants[0] if assistants else None


@router.get("/knowledge", dependencies=[allow(VIEWER)])
def knowledge_page(request: Request, session: SessionDep, principal: CurrentUser, assistant_id: str | None = None):
    """Documents of one assistant's knowledge base, upload, delete, re-index and a search playground."""
    try:
        assistants, assistant = _pick_assistant(session, principal, assistant_id)
    except NotFound:
        return assistant_not_found(request, assistant_id)
    docs = document_routes.list_documents(assistant.id, session) if assistant else []
    sites = website_routes.list_websites(assistant.id, session) if assistant else []
    return render(request, "knowledge.html", assistants=assistants, assistant=assistant, documents=docs,
                  busy=any(d.status in ("queued", "processing") for d in docs), websites=sites,
                  websites_busy=any(s.last_run and s.last_run.status in ("queued", "running") for s in sites))


@router.get("/console", dependencies=[allow(SUPERVISOR)])
def console_page(request: Request, session: SessionDep, principal: CurrentUser, assistant_id: str | None = None):
    """Chat with an assistant as a ``test`` conversation, with sources and function calls shown live."""
    try:
        assistants, assistant = _pick_assistant(session, principal, assistant_id)
    except NotFound:
        return assistant_not_found(request, assistant_id)
    return render(request, "console.html", assistants=assistants, assistant=assistant)


# --------------------------------------------------------------------------- approved answers and regression checks


@router.get("/approved", dependencies=[allow(VIEWER)])
def approved_page(request: Request, session: SessionDep, principal: CurrentUser, assistant_id: str | None = None,
                  needs_review: bool = False):
    """An assistant's approved answers: edit, delete, clear review flags, add one, import a spreadsheet."""
    try:
        assistants, assistant = _pick_assistant(session, principal, assistant_id)
    except NotFound:
        return assistant_not_found(request, assistant_id)
    answers = approved.list_answers(session, assistant) if assistant else []
    flagged = sum(a.needs_review for a in answers)
    if needs_review:
        answers = [a for a in answers if a.needs_review]
    return render(request, "approved.html", assistants=assistants, assistant=assistant, answers=answers,
                  flagged=flagged, only_flagged=needs_review)


@router.get("/regression", dependencies=[allow(VIEWER)])
def regression_page(request: Request, session: SessionDep, principal: CurrentUser, assistant_id: str | None = None,
                    run_id: str | None = None):
    """An assistant's regression cases, a button that runs them, and a run's results (the latest unless
    ``run_id`` picks one) as what each case expected against what it got, with the history of runs."""
    try:
        run = regression_routes.get_run(run_id, session) if run_id else None
        assistants, assistant = _pick_assistant(session, principal, run.assistant_id if run else assistant_id)
    except NotFound:
        _ = i18n.translator(request)
        return render(request, "error.html", status_code=404, title=_("Not found"),
                      message=_("No regression run has the id %(id)s, or its assistant is gone.", id=run_id)
                      if run_id else _("No assistant has the id or name %(id)s.", id=assistant_id))
    cases = regression.list_cases(session, assistant) if assistant else []
    runs = regression_routes.list_runs(assistant.id, session, limit=20) if assistant else []
    if run is None and runs:
        run = regression_routes.get_run(runs[0].id, session)
    by_id = {c.id: c for c in cases}
    results = [case_view(r, by_id.get(r.case_id)) for r in run.results] if run else []
    return render(request, "regression.html", assistants=assistants, assistant=assistant, cases=cases, runs=runs,
                  run=run, results=results)


def case_view(result: regression_routes.CaseResultPublic, case: regression.RegressionCase | None) -> dict:
    """A case's result beside what the case expects: status, source files (each expected one cited or
    not, and the others cited) and facts (each found or not). ``case`` is None once the case is deleted:
    then only what the result's changes tell is known."""
    status_change = next((c for c in result.changes if c.what == "status"), None)
    missing_sources = {c.expected for c in result.changes if c.what == "sources"}
    missing_facts = {c.expected for c in result.changes if c.what == "facts"}
    sources = dict.fromkeys([*(case.expected_sources if case else []), *sorted(missing_sources)])
    facts = dict.fromkeys([*(case.expected_facts if case else []), *sorted(missing_facts)])
    cited = regression.cited_filenames(result.status, [s["filename"] for s in result.sources])
    return {"r": result, "expected_status": status_change.expected if status_change else result.status,
            "other_cited": [f for f in cited if f not in sources],
            "sources": [(f, f not in missing_sources) for f in sources],
            "facts": [(f, f not in missing_facts) for f in facts]}
