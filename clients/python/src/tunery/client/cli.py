"""The `tunery` command line. Every command takes --json (machine-readable output on stdout, one JSON
document — or one JSON object per line for streams) and exits non-zero on failure with the reason on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from tunery.auth.v1 import auth_pb2

from tunery.client.errors import TuneryError

EXIT_FAILURE = 1


class CommandError(Exception):
    """A failure the CLI reports as one line on stderr (and exit code 1)."""


def emit(args: argparse.Namespace, value: Any, human: Callable[[Any], str] | None = None) -> None:
    """Print `value` as JSON with --json, else as the human rendering."""
    if args.json:
        print(json.dumps(value, default=str, indent=2))
    else:
        print(human(value) if human else value)


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _server_settings():
    try:
        from tunery.services.kit.settings import load
    except ImportError:
        raise CommandError("this command needs the Tunery services installed (pip install tunery)") from None
    return load([])[0]


def cmd_up(args: argparse.Namespace) -> None:
    from tunery.services import stack
    settings = _server_settings()
    progress = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    if args.detach:
        components = stack.up(settings, progress)
        emit(args, [c.__dict__ for c in components],
             lambda cs: table(cs, ["name", "address", "pid"]) + "\nstop with: tunery down")
    else:
        stack.run_foreground(settings, progress)


def cmd_down(args: argparse.Namespace) -> None:
    from tunery.services import stack
    stopped = stack.down(_server_settings())
    emit(args, {"stopped": [c.name for c in stopped]},
         lambda v: "stopped: " + (", ".join(v["stopped"]) or "nothing was running"))


def cmd_status(args: argparse.Namespace) -> None:
    from tunery.services import stack
    rows = stack.status(_server_settings())
    emit(args, rows, lambda r: table(r, ["component", "address", "pid", "health"]))
    if any(r["health"] != "SERVING" for r in rows):
        raise SystemExit(EXIT_FAILURE)


def _key_row(key) -> dict:
    return {"name": key.name, "admin": key.admin, "state": auth_pb2.ApiKeyState.Name(key.state).split("_")[-1],
            "description": key.description, "secret_prefix": key.secret_prefix,
            "create_time": key.create_time.ToJsonString()}


def cmd_keys_create(args: argparse.Namespace) -> None:
    from tunery.client import Client
    reply = Client().keys.create(args.project, args.admin, args.description)
    emit(args, {**_key_row(reply.api_key), "secret": reply.secret},
         lambda k: f"{k['secret']}\n({k['name']}; shown once — store it now)")


def cmd_keys_list(args: argparse.Namespace) -> None:
    from tunery.client import Client
    rows = [_key_row(k) for k in Client().keys.list(args.project)]
    emit(args, rows, lambda r: table(r, ["name", "admin", "state", "description", "create_time"]))


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    from tunery.client import Client
    emit(args, _key_row(Client().keys.revoke(args.name)), lambda k: f"revoked {k['name']}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser = argparse.ArgumentParser(prog="tunery", description="Tunery: LoRA fine-tuning as a service",
                                     parents=[common])
    groups = parser.add_subparsers(dest="command", required=True)

    def command(sub, name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(handler=handler)
        return p

    up = command(groups, "up", cmd_up, "start the local stack (object store + three services)")
    up.add_argument("--detach", action="store_true", help="return once healthy; stop later with `tunery down`")
    command(groups, "down", cmd_down, "stop a stack started with `tunery up --detach`")
    command(groups, "status", cmd_status, "each component's address and health")

    keys = groups.add_parser("keys", help="API keys (needs an admin key)").add_subparsers(
        dest="keys_command", required=True)
    create = command(keys, "create", cmd_keys_create, "create an API key (shown once)")
    create.add_argument("--project", required=True)
    create.add_argument("--admin", action="store_true", help="may act on every project")
    create.add_argument("--description", default="")
    listing = command(keys, "list", cmd_keys_list, "list API keys (never their secrets)")
    listing.add_argument("--project")
    revoke = command(keys, "revoke", cmd_keys_revoke, "revoke an API key")
    revoke.add_argument("name", help="projects/{project}/apiKeys/{key}")

    from tunery.client import commands  # the dataset, job, model and demo commands
    commands.register(groups, command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except TuneryError as error:
        hint = " (is the stack running? `tunery up --detach`)" if error.code.name == "UNAVAILABLE" else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    except (CommandError, FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
