"""`thermoml keys create | list | revoke`: API keys, straight against the database."""

from __future__ import annotations

import argparse
from typing import Any

from service.config import get_settings
from service.db import keys as key_repo
from service.db import tenancy
from service.db.session import make_engine, make_sessionmaker
from service.errors import ServiceError


def _sessions() -> Any:
    return make_sessionmaker(make_engine(get_settings().resolved_database_url))


def cmd_create(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    with _sessions().begin() as session:
        key, secret = key_repo.create(session, scopes=scopes, name=args.name, tenant=args.tenant)
        print(
            f"created key {key.id} ({key.name}; tenant {key.tenant}; scopes "
            f"{','.join(key.scopes)}); it is shown only now:"
        )
    print(secret)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _sessions()() as session:
        keys = key_repo.list_all(session)
        if not keys:
            print("no keys")
        for key in keys:
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(
                f"{key.id}  {key.prefix}…  {key.name:<20}  {key.tenant:<16}  "
                f"{','.join(key.scopes):<22}  "
                f"created {key.created_at:%Y-%m-%d}  {state}"
            )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _sessions().begin() as session:
        key = key_repo.revoke(session, ref=args.key)
        print(f"revoked {key.id} ({key.name})")
    return 0


def add_key_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys (needed when THERMOML_AUTH=required)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key; prints it once, as the last word")
    create.add_argument("--scopes", required=True, help="comma-separated: read,train,infer,admin")
    create.add_argument("--name", default="unnamed")
    create.add_argument(
        "--tenant",
        default=tenancy.DEFAULT,
        help="the application the key belongs to: it reaches only its tenant's jobs, data sets "
        "and models (an admin key reaches every tenant's)",
    )
    create.set_defaults(func=guarded(cmd_create))
    listing = actions.add_parser("list", help="every key (never the secrets)")
    listing.set_defaults(func=guarded(cmd_list))
    revoke = actions.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    revoke.set_defaults(func=guarded(cmd_revoke))


def guarded(command: Any) -> Any:
    """Print a ServiceError's message (not a traceback) and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except ServiceError as exc:
            print(f"error: {exc.message}")
            return 2

    return run
