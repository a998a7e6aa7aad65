"""``atende users``: add, list and change users, set a password, make a personal API token -- for the first
accounts of a deployment and for scripts (the same rules as ``/api/users``: ``runtime.accounts``)."""
from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from core.db import utcnow
from core.errors import DomainError
from runtime.accounts.roles import ROLES


def _read_password(args) -> str | None:
    """The password on standard input's first line (``--password-stdin``), else None (one is generated)."""
    return sys.stdin.readline().rstrip("\n") if args.password_stdin else None


def _run(args, action) -> int:
    from atende.services import build_services
    from core.settings import Settings

    services = build_services(Settings())
    try:
        with services.session() as db:
            action(db)
        return 0
    except DomainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        services.close()


def cmd_add(args) -> int:
    from runtime.accounts import users

    def add(db) -> None:
        given = _read_password(args)
        password = given or users.generate_password()
        user = users.create_user(db, email=args.email, role=args.role, name=args.name, password=password,
                                 assistants=args.assistant, all_assistants=args.all_assistants)
        db.commit()
        print(f"{user.id}\t{user.email}\t{user.role}" + ("" if given else f"\tpassword: {password}"))

    return _run(args, add)


def cmd_list(args) -> int:
    from runtime.accounts import users

    def show(db) -> None:
        for u in users.list_users(db):
            seen = "all" if u.role == "admin" or u.all_assistants else ",".join(u.assistant_ids) or "none"
            print(f"{u.id}\t{u.email}\t{u.role}\t{'active' if u.active else 'inactive'}\tassistants: {seen}")

    return _run(args, show)


def _user(db, email: str):
    from core.errors import NotFound
    from runtime.accounts import users

    user = users.find_by_email(db, email)
    if user is None:
        raise NotFound(f"no user with e-mail {email!r}")
    return user


def cmd_set(args) -> int:
    from api.sessions import end_user_sessions
    from runtime.accounts import users

    def change(db) -> None:
        user = _user(db, args.email)
        changes = {k: v for k, v in (("role", args.role), ("active", args.active),
                                     ("all_assistants", args.all_assistants)) if v is not None}
        if args.assistant is not None:
            changes["assistants"] = args.assistant
        users.update_user(db, user, changes)
        if changes.get("active") is False:
            end_user_sessions(db, user.id)
        db.commit()
        print(f"{user.id}\t{user.email}\t{user.role}\t{'active' if user.active else 'inactive'}")

    return _run(args, change)


def cmd_password(args) -> int:
    from api.sessions import end_user_sessions
    from runtime.accounts import users

    def set_password(db) -> None:
        user = _user(db, args.email)
        given = _read_password(args)
        password = given or users.generate_password()
        users.update_user(db, user, {"password": password})
        ended = end_user_sessions(db, user.id)
        db.commit()
        print(f"password set for {user.email}; {ended} session(s) signed out" + ("" if given else f"\tpassword: {password}"))

    return _run(args, set_password)


def cmd_token(args) -> int:
    from runtime.accounts import tokens

    def make(db) -> None:
        expires = utcnow() + timedelta(days=args.days) if args.days else None
        row, value = tokens.issue_token(db, _user(db, args.email), args.name, expires)
        print(value)

    return _run(args, make)


def add_arguments(sub) -> None:
    """The ``users`` command and its subcommands, on the CLI's subparsers ``sub``."""
    u = sub.add_parser("users", help="dashboard and API users").add_subparsers(dest="sub", required=True)
    add = u.add_parser("add", help="add a user (a password is generated and printed unless --password-stdin)")
    add.add_argument("email")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--name", default="")
    add.add_argument("--assistant", action="append", default=[], help="an assistant it sees (id or name); repeatable")
    add.add_argument("--all-assistants", action="store_true", help="it sees every assistant")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=cmd_add)
    u.add_parser("list", help="every user").set_defaults(func=cmd_list)
    st = u.add_parser("set", help="change a user's role, assistants or state")
    st.add_argument("email")
    st.add_argument("--role", choices=ROLES)
    st.add_argument("--assistant", action="append", help="replaces its assistants; repeatable")
    st.add_argument("--all-assistants", action=argparse.BooleanOptionalAction, default=None)
    st.add_argument("--active", action=argparse.BooleanOptionalAction, default=None,
                    help="--no-active signs it out everywhere and stops its tokens")
    st.set_defaults(func=cmd_set)
    pw = u.add_parser("password", help="set a user's password (generated and printed unless --password-stdin); "
                                       "signs it out everywhere")
    pw.add_argument("email")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(func=cmd_password)
    tk = u.add_parser("token", help="make a personal API token for a user; prints it (shown this once)")
    tk.add_argument("email")
    tk.add_argument("--name", required=True)
    tk.add_argument("--days", type=int, help="expires after this many days (default: until revoked)")
    tk.set_defaults(func=cmd_token)
