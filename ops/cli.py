"""The `mailmigrator` command line.

Exit status: 0 success; 1 the operation failed or found a difference;
2 bad usage or bad configuration (one line on stderr naming what is wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from eventsourcing.persistence import PersistenceError

from mailmigrator.adapters.store.node_status import NodeStatusTable, describe_node
from mailmigrator.domain.errors import ExplainedError
from mailmigrator.adapters.store.event_store import StoreError, StoreSettingError, create_key_file
from mailmigrator.domain.errors import DomainError, InvalidLogin
from mailmigrator.domain.logins import normalise_login
from mailmigrator.domain.states import ACCOUNT_STATES
from mailmigrator.ops.allocator import bound_allocator
from mailmigrator.ops.config import Config, ConfigError, default_config_path, load_config
from mailmigrator.ops.composition import OpenStore, open_store
from mailmigrator.projections.accounts import (
    AccountDoc,
    AccountRow,
    FiltersDoc,
    StateTotals,
    event_row,
    fleet_progress,
    new_run_doc,
    roster_progress,
)
from mailmigrator.projections.log import human_bytes

if TYPE_CHECKING:
    from mailmigrator.adapters.mail.servers import MailServers

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandFailed(ExplainedError):
    """The operation failed; the message is the one line to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(EXIT_USAGE, f"mailmigrator: {message} (see mailmigrator --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailmigrator", description="Zero-downtime IMAP/POP3 mail-server migration.")
    parser.add_argument("--config", type=Path, help="config file (default $MAILMIGRATOR_CONFIG, else ./mailmigrator.toml)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("status", help="the run's state and every account with its state")
    p.add_argument("--state", choices=ACCOUNT_STATES, metavar="STATE",
                   help=f"only accounts in this state: {', '.join(ACCOUNT_STATES)}")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("show", help="one account's projection, with its folders")
    p.add_argument("login")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("history", help="every event of one account, in order: the auditor's view")
    p.add_argument("login")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("log", help="print the human-readable migration log")
    p.add_argument("--follow", action="store_true", help="keep printing new lines until interrupted")

    sub.add_parser("replay", help="drop and rebuild every projection and the log file from the events")
    sub.add_parser("start", help="record the Start Migration button")
    sub.add_parser("stop", help="record the Stop Migration button")

    p = sub.add_parser("migrate", help="verify, create and copy accounts now (manual migration)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="LOGIN", help="the user's login on the old server")
    who.add_argument("--bulk", type=Path, metavar="FILE",
                     help="lines user:pass or user:pass:alias@domain; blank lines and # comments ignored")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin, else prompt")
    p.add_argument("--domain", help="domain of a bare username (default [migration] primary_domain)")

    p = sub.add_parser("precopy", help="copy roster accounts' mail before their owners log in (no passwords)")
    p.add_argument("--all", action="store_true", help="every roster account not seen yet, and those pre-copied")
    p.add_argument("logins", nargs="*", metavar="LOGIN")

    p = sub.add_parser("verify", help="compare old and new mailbox of one account, or of every migrated one; "
                                      "exit 0 only when equal")
    p.add_argument("login", nargs="?")
    p.add_argument("--all", action="store_true", help="every completed or swept account, the configured "
                                                      "concurrency at a time; resumes where a run stopped")
    p.add_argument("--again", action="store_true", help="with --all: compare accounts already compared since "
                                                        "their last copy too")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin, else prompt")

    p = sub.add_parser("report", help="one row per roster account: copy, times, verify result; csv, json or html")
    p.add_argument("--format", choices=("csv", "json", "html"), help="default: by --out's suffix, else csv")
    p.add_argument("--out", type=Path, help="write here (atomically) instead of stdout")

    p = sub.add_parser("check", help="pre-flight: servers, TLS, capabilities, logins, paths, engine, vault key; "
                                     "with LOGIN its folder plan; writes nothing; exit 1 when anything is wrong")
    p.add_argument("login", nargs="?")
    p.add_argument("--json", action="store_true")
    p.add_argument("--password-stdin", action="store_true", help="read LOGIN's password from stdin, else prompt")

    p = sub.add_parser("roster", help="the accounts the run is expected to move")
    roster = p.add_subparsers(dest="roster_command", required=True, parser_class=_Parser)
    p = roster.add_parser("import", help="put the logins of FILE on the roster (one a line, or user:pass[:alias])")
    p.add_argument("file", type=Path)
    p.add_argument("--replace", action="store_true", help="also take off the roster the accounts not in FILE")

    sub.add_parser("finish", help="complete pending migrations, then sweep late mail from the old server")

    sub.add_parser("serve", help="run the proxy listeners, migration workers and projections until SIGTERM")
    p = sub.add_parser("notice", help="put the notice message into the migration account's INBOX")
    p.add_argument("file", type=Path, help="the notice as an RFC 5322 message (.eml)")

    p = sub.add_parser("keygen", help="create a new AES key file (mode 0600) for [store] encryption_key_file")
    p.add_argument("file", type=Path)

    p = sub.add_parser("admin-password", help="write the console's admin password hash (argon2id) to FILE, mode 0600")
    p.add_argument("file", type=Path, help="the file named by [admin] password_file")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin, else prompt twice")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bound_allocator()
    try:
        return _run(args)
    except BaseExceptionGroup as group:
        # A task of `serve`'s nursery that meets bad configuration: still one line, exit 2.
        config_errors, others = group.split((ConfigError, StoreSettingError))
        if config_errors is None or others is not None:
            raise
        return _fail(EXIT_USAGE, str(first_leaf(config_errors)))


def first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "keygen":
            return cmd_keygen(args)
        if args.command == "admin-password":
            return cmd_admin_password(args)
        config_path = args.config or default_config_path()
        config = load_config(config_path, allow_missing=args.config is None)
        return COMMANDS[args.command](config, args)
    except (ConfigError, StoreSettingError) as e:
        return _fail(EXIT_USAGE, str(e))
    except InvalidLogin as e:
        return _fail(EXIT_USAGE, f"{e}; give LOGIN as user@domain or set [migration] primary_domain")
    except (StoreError, DomainError, CommandFailed) as e:
        return _fail(EXIT_FAILED, str(e))
    except PersistenceError as e:
        return _fail(EXIT_FAILED, f"event store error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    except KeyboardInterrupt:
        return 130


def _fail(code: int, message: str) -> int:
    print(f"mailmigrator: {message}", file=sys.stderr)
    return code


def _open(config: Config, *, create: bool = False) -> OpenStore | None:
    wired = open_store(config, create=create)
    if wired is not None:
        wired.views.catch_up()
    return wired


def _login(config: Config, raw: str) -> str:
    return normalise_login(raw, config.migration.primary_domain)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    wired = _open(config)
    if wired is None:
        run = new_run_doc()
        accounts: list[AccountRow] = []
        summaries: list[str] = []
        totals: list[StateTotals] = []
        nodes: list[dict[str, Any]] = []
        print(f"mailmigrator: no events recorded yet in {config.store.url}", file=sys.stderr)
    else:
        run = wired.views.run_status()
        if args.json:
            summaries = wired.views.account_summaries(args.state)
        else:
            accounts = wired.views.account_rows(args.state)
        totals = wired.views.state_totals()
        nodes = NodeStatusTable.open(wired.app.factory).nodes()
        wired.close()
    if args.json:
        rest = {
            "run": {"state": run["state"], "updated_at": run.get("updated_at")},
            "progress": fleet_progress(totals),
            "nodes": nodes,
        }
        if (roster := roster_progress(totals)) is not None:
            rest["roster"] = roster
        print(_status_json(summaries, rest))
        return EXIT_OK
    counts: dict[str, int] = {}
    for doc in accounts:
        counts[doc["state"]] = counts.get(doc["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no accounts"
    print(f"run: {run['state']}    accounts: {len(accounts)} ({summary})")
    if (roster := roster_progress(totals)) is not None:
        print(f"roster: {roster['done']}/{roster['accounts']} accounts done, {roster['in_progress']} in progress, "
              f"{roster['failed']} failed, {roster['not_seen']} not seen yet")
    for node in nodes:
        print(describe_node(node))
    p = fleet_progress(totals)
    if accounts:
        eta = "-" if p["eta_seconds"] is None else f"{p['eta_seconds'] // 60}m{p['eta_seconds'] % 60:02d}s"
        print(f"progress: {p['accounts_done']}/{p['accounts_total']} accounts done, {p['messages']:,} messages, "
              f"{human_bytes(p['bytes'])} copied, {human_bytes(int(p['bytes_per_second']))}/s, ETA {eta}")
    if accounts:
        print(f"{'LOGIN':32} {'STATE':10} {'LOCKED':6} {'FOLDERS':>7} {'MESSAGES':>9} {'SIZE':>10}  {'NODE':20} ERROR")
        for doc in accounts:
            print(
                f"{doc['login']:32} {doc['state']:10} {'yes' if doc['locked'] else 'no':6} "
                f"{doc['folders']:>7} {doc['messages']:>9,} {human_bytes(doc['bytes']):>10}  "
                f"{doc['node'] or '-':20} {doc['error'] or ''}"
            )
    return EXIT_OK


def _status_json(accounts: list[str], rest: Mapping[str, object]) -> str:
    """The status as indented JSON with one account (already JSON) a line: indenting every account is many times
    slower."""
    listed = ",\n".join("    " + doc for doc in accounts)
    head = '{\n  "accounts": ' + (f"[\n{listed}\n  ]" if accounts else "[]") + ",\n"
    return head + json.dumps(rest, indent=2, sort_keys=True)[2:]


def cmd_show(config: Config, args: argparse.Namespace) -> int:
    login = _login(config, args.login)
    wired = _open(config)
    doc = wired.views.account(login) if wired else None
    if wired:
        wired.close()
    if doc is None:
        raise CommandFailed(f"no account {login!r} is recorded; `mailmigrator status` lists them")
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    for key in ("login", "state", "locked", "redirect", "target_login", "aliases", "messages", "bytes",
                "skipped", "attempts", "first_seen", "verified_at", "started_at", "completed_at",
                "swept_messages", "credential_destroyed_at", "engine", "identity", "while_copying", "switch",
                "precopied_at", "precopy_refreshed_at", "password_pending", "error"):
        value = doc.get(key)
        if key == "bytes":
            value = f"{value:,} ({human_bytes(doc['bytes'])})"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        elif key == "switch" and isinstance(value, dict):
            value = (f"{value['duration_seconds']:.2f} s at {value['at']}, {value['sessions_closed']} old-server "
                     f"sessions closed, {value['delta_messages']:,} messages in the final delta")
        print(f"{key + ':':24} {'-' if value is None else value}")
    for conflict in doc.get("alias_conflicts", []):
        print(f"{'alias not applied:':24} {conflict['address']} ({conflict['reason']})")
    for line in filter_lines(doc.get("filters")):
        print(line)
    if doc["folders"]:
        print(f"{'FOLDER':30} {'TARGET':30} {'MESSAGES':>9} {'SIZE':>10} {'SKIPPED':>7} DONE")
        for name, folder in sorted(doc["folders"].items()):
            print(
                f"{name:30} {folder['target']:30} {folder['messages']:>9,} "
                f"{human_bytes(folder['bytes']):>10} {folder['skipped']:>7} {'yes' if folder['done'] else 'no'}"
            )
    return EXIT_OK


def filter_lines(filters: FiltersDoc | None) -> list[str]:
    """`show`'s lines for the Sieve scripts: each moved one with its hash, the active one, each refused one."""
    if filters is None:
        return []
    if filters["not_offered"]:
        lines = [f"{'sieve:':24} NOT moved: {filters['not_offered']}"]
    else:
        active = filters["active"] or "none"
        lines = [f"{'sieve:':24} {len(filters['scripts'])} script(s) moved, active: {active}"]
        lines += [f"{'sieve script:':24} {s['name']} ({s['bytes']} bytes, sha256 {str(s['sha256'])[:12]})"
                  for s in filters["scripts"]]
    lines += [f"{'sieve script refused:':24} {r['name']} ({r['reason']})" for r in filters["refused"]
              if not filters["not_offered"]]
    return lines


def cmd_history(config: Config, args: argparse.Namespace) -> int:
    login = _login(config, args.login)
    wired = open_store(config, create=False)
    if wired is None:
        raise CommandFailed(f"no account {login!r} is recorded; `mailmigrator status` lists them")
    try:
        events = wired.app.history(login)
    finally:
        wired.close()
    rows = [event_row(event) for event in events]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    for row in rows:
        fields = " ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(row["data"].items()))
        print(f"{row['at']}  v{row['version']:<4} {row['event']:20} {fields}")
    return EXIT_OK


def cmd_log(config: Config, args: argparse.Namespace) -> int:
    wired = _open(config)
    if wired is None:
        return EXIT_OK
    try:
        printed = 0
        while True:
            lines = wired.views.log_lines(after=printed)
            for line in lines:
                print(line)
            printed += len(lines)
            if not args.follow:
                return EXIT_OK
            sys.stdout.flush()
            time.sleep(1.0)
            wired.views.catch_up()
    finally:
        wired.close()


def cmd_replay(config: Config, args: argparse.Namespace) -> int:
    wired = open_store(config, create=False)
    if wired is None:
        raise CommandFailed(f"no events recorded yet in {config.store.url}: nothing to replay")
    try:
        started = time.monotonic()
        count = wired.views.replay()
        elapsed = time.monotonic() - started
    finally:
        wired.close()
    rate = count / elapsed if elapsed > 0 else 0.0
    print(f"replayed {count:,} events in {elapsed:.1f} s ({rate:,.0f} events/s)")
    return EXIT_OK


def _press(config: Config, action: Callable[[OpenStore], bool], done: str, already: str) -> int:
    wired = _open(config, create=True)
    assert wired is not None
    try:
        wired.app.configure_run(config.general_settings())
        changed = action(wired)
        wired.views.catch_up()
    finally:
        wired.close()
    print(done if changed else already)
    return EXIT_OK


def cmd_start(config: Config, args: argparse.Namespace) -> int:
    return _press(config, lambda w: w.app.start_run("cli"), "migration started", "migration was already started")


def cmd_stop(config: Config, args: argparse.Namespace) -> int:
    return _press(config, lambda w: w.app.stop_run("cli"), "migration stopped", "migration was already stopped")


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        create_key_file(args.file)
    except FileExistsError:
        return _fail(EXIT_FAILED, f"{args.file} exists; refusing to overwrite a key (events encrypted with it would be lost)")
    except OSError as e:
        return _fail(EXIT_FAILED, f"{args.file}: {e.strerror}")
    print(f"wrote a new AES-256 key to {args.file} (mode 0600); back it up: without it the events cannot be read")
    return EXIT_OK


def cmd_admin_password(args: argparse.Namespace) -> int:
    from mailmigrator.ops.console.auth import write_password_file

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass("new admin password for the console: ")
        if password != getpass.getpass("the same again: "):
            raise CommandFailed("the two passwords differ; nothing written")
    if len(password) < 8:
        raise CommandFailed("the admin password must have at least 8 characters; nothing written")
    try:
        write_password_file(args.file, password)
    except OSError as e:
        raise CommandFailed(f"{args.file}: {e.strerror}") from None
    print(f"wrote the admin password hash to {args.file} (mode 0600); name it in [admin] password_file")
    return EXIT_OK


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.manual_migration import cmd_migrate as migrate

    return migrate(config, args)


def cmd_finish(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.finish import cmd_finish as finish

    return finish(config, args)


def compare_mailboxes(config: Config, servers: MailServers, typed: str, login: str, password: str | None,
                      target_login: str, identity: bool) -> list[str]:
    """The differences `verify` reports: mail, and the Sieve scripts when they move."""
    from mailmigrator.ops.composition import sieve_servers

    differences = servers.differences(typed, login, password, target_login, config.migration.exclude_folders,
                                      identity=identity)
    if config.migration.sieve:
        # Scripts by content hash, and which one is active.
        differences += sieve_servers(config, servers).differences(servers.source_name(typed, login),
                                                                  login, password, target_login)
    return differences


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.domain.errors import MigrationRefused
    from mailmigrator.ops.composition import mail_servers
    from mailmigrator.ops.logs import configure_logging
    from mailmigrator.ops.manual_migration import read_old_password

    if bool(args.login) == bool(args.all):
        return _fail(EXIT_USAGE, "verify: give LOGIN or --all, not both")
    configure_logging()
    if args.all:
        from mailmigrator.ops.verify_all import verify_all

        return verify_all(config, again=args.again)
    login = _login(config, args.login)
    source = config.source
    password = None if (source is not None and source.admin_user and not args.password_stdin) else read_old_password(args, login)
    target_login, identity = login, False
    wired = _open(config)
    if wired is not None:
        try:
            if wired.app.has_account(login):
                account = wired.app.account(login)
                target_login = account.target_login or login
                # Where the copy promised identity, the UIDVALIDITY and UIDs are compared too.
                identity = account.engine == "dovecot"
        finally:
            wired.close()
    try:
        differences = compare_mailboxes(config, mail_servers(config), args.login, login, password, target_login,
                                        identity)
    except MigrationRefused as e:
        raise CommandFailed(str(e)) from None
    for line in differences:
        print(line)
    _record_comparison(config, login, differences)
    if differences:
        print(f"{login}: {len(differences)} difference(s)", file=sys.stderr)
        return EXIT_FAILED
    print(f"{login}: old and new mailbox are equal")
    return EXIT_OK


# How many difference lines a recorded comparison keeps, and how long each may be.
COMPARISON_EXAMPLES = 5
EXAMPLE_LENGTH = 200


def comparison_examples(differences: list[str]) -> list[str]:
    return [line[:EXAMPLE_LENGTH] for line in differences[:COMPARISON_EXAMPLES]]


def _record_comparison(config: Config, login: str, differences: list[str]) -> None:
    """Record the comparison on an account the store knows; a mailbox compared before any event stays unrecorded."""
    wired = _open(config)
    if wired is None:
        return
    try:
        if wired.app.has_account(login):
            wired.app.record_comparison(login, not differences, len(differences), comparison_examples(differences),
                                        config.migration.node_name)
    finally:
        wired.close()


def cmd_report(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.report import format_for, render, report_rows, write_atomically

    wired = _open(config)
    docs: list[AccountDoc] = []
    if wired is not None:
        try:
            docs = wired.views.accounts()
        finally:
            wired.close()
    text = render(report_rows(docs), format_for(args.format, args.out))
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        write_atomically(args.out, text)
    except OSError as e:
        raise CommandFailed(f"{args.out}: {e.strerror}") from None
    return EXIT_OK


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "status": cmd_status,
    "show": cmd_show,
    "history": cmd_history,
    "log": cmd_log,
    "replay": cmd_replay,
    "start": cmd_start,
    "stop": cmd_stop,
    "migrate": cmd_migrate,
    "precopy": lambda config, args: _precopy(config, args),
    "finish": cmd_finish,
    "verify": cmd_verify,
    "report": cmd_report,
    "check": lambda config, args: _check(config, args),
    "serve": lambda config, args: _serve(config, args),
    "notice": lambda config, args: _notice(config, args),
    "roster": lambda config, args: _roster(config, args),
}


def _roster(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.roster import cmd_roster_import

    return cmd_roster_import(config, args)


def _serve(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.serve import cmd_serve

    return cmd_serve(config, args)


def _precopy(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.precopy import cmd_precopy

    return cmd_precopy(config, args)


def _check(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.check import cmd_check

    return cmd_check(config, args)


def _notice(config: Config, args: argparse.Namespace) -> int:
    from mailmigrator.ops.serve import put_notice

    try:
        message = args.file.read_bytes()
    except OSError as e:
        raise CommandFailed(f"{args.file}: {e.strerror}") from None
    if b"\n\n" not in message.replace(b"\r\n", b"\n"):
        raise CommandFailed(f"{args.file} is not a mail message (no header/body separator)")
    replaced = put_notice(config, message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    print(f"notice put into {config.migration.migration_account} INBOX ({replaced} older message(s) replaced)")
    return EXIT_OK
