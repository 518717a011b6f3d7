"""The `frontfilter` command. The only code that prints to the administrator or exits.

Every failure an administrator can cause (a bad config, a bad rule, a missing file, a port in
use) ends with readable lines on stderr and a non-zero exit — never a traceback.

Exit codes: 0 ok; 1 `check` found problems (`queue`: an id found but unreadable);
2 usage or start-up error;
`passwd`: 0 done, 2 error; `scan`: 0 accept, 1 reject, 2 error, 3 tempfail, 4 discard, 5 quarantine;
`test`: 0 every message as expected, 1 some not, 2 the corpus or the config cannot be read;
`quarantine`: 0 done, 1 an id not done (not held, busy, refused, not released) or a file
unreadable, 2 usage error or an unusable quarantine (`show` of an id it cannot show included).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

from frontfilter import __version__

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2
SCAN_EXIT = {"accept": 0, "reject": 1, "tempfail": 3, "discard": 4, "quarantine": 5}


def main(argv: list[str] | None = None) -> int:
    _escape_undecodable_output()
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    from frontfilter.config import ConfigError

    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return EXIT_ERROR
    except _Fatal as error:
        error.report()
        return EXIT_ERROR
    except ConfigError as error:      # found past the config's own load: a sender map, say
        _Fatal(*error.problems).report()
        return EXIT_ERROR


def _escape_undecodable_output() -> None:
    """What clients and backends sent that was not UTF-8 is held as surrogates
    (surrogateescape): a HELO name, a backend's answer in the queue's state. Printed, it died
    with a traceback in a UTF-8 locale, or came out as raw bytes that no JSON reader takes in
    the C locale. Written as `\\udcXX` it reads as what was sent — and in a JSON string it is
    the right escape."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


class _Fatal(Exception):
    def __init__(self, *lines: str):
        self.lines = lines

    def report(self) -> None:
        """One line each on stderr; at error priority where stderr is the journal."""
        from frontfilter.observe import writes_to_the_journal

        prefix = "<3>" if writes_to_the_journal(sys.stderr) else ""
        for line in self.lines:
            print(f"{prefix}frontfilter: {line}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frontfilter", description="SMTP edge relay and mail filter")
    parser.add_argument("--version", action="version", version=f"frontfilter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--config", "-c", required=True, type=Path)
    serve.set_defaults(run=cmd_serve)

    check = sub.add_parser("check", help="validate the config and the rules it points to")
    check.add_argument("--config", "-c", required=True, type=Path)
    check.add_argument("--rules", type=Path, help="check this rules dir instead of the config's "
                       "(e.g. a staged copy before putting it live)")
    check.set_defaults(run=cmd_check)

    scan = sub.add_parser("scan", help="dry-run a message against the rules")
    scan.add_argument("message", type=Path, help="an .eml file ('-' for stdin)")
    scan.add_argument("--config", "-c", type=Path, help="config (for rules dir and limits)")
    scan.add_argument("--rules", type=Path, help="rules dir (default: from --config, else ./rules)")
    scan.add_argument("--sender", default="sender@example.net")
    scan.add_argument("--recipient", action="append", default=None)
    scan.add_argument("--client-ip", default="192.0.2.1")
    scan.add_argument("--helo", default="client.example.net")
    scan.add_argument("--auth-user", default=None, help="as if the client had authenticated as this user")
    scan.add_argument("--dns", action="store_true", help="ask the configured resolvers, as the relay "
                      "would: DNS lists of --client-ip, SPF of --sender (needs --config)")
    scan.add_argument("--output", "-o", type=Path, help="write the rewritten message here")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.set_defaults(run=cmd_scan)

    passwd = sub.add_parser("passwd", help="add or change an SMTP AUTH user in a users file",
                            description="Set USER's password in FILE (created with mode 0600 if "
                            "missing). The password is asked twice on a terminal, else read as one "
                            "line from stdin. Send the relay SIGHUP to use the new file (a restart where "
                            "systemd's LoadCredential hands it over: the copy is made at start).")
    passwd.add_argument("file", type=Path, help="the users file (auth.users_file)")
    passwd.add_argument("user")
    passwd.add_argument("--delete", action="store_true", help="remove USER instead")
    passwd.set_defaults(run=cmd_passwd)

    _queue_parser(sub)
    _quarantine_parser(sub)

    sink = sub.add_parser("sink", help="a local SMTP server that stores mail in a Maildir")
    sink.add_argument("--listen", default="127.0.0.1:2526")
    sink.add_argument("--maildir", required=True, type=Path)
    sink.set_defaults(run=cmd_sink)
    return parser


def _load_config(path: Path) -> Any:
    from frontfilter.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as error:
        raise _Fatal(*error.problems) from None


# ---- serve --------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    from frontfilter.process import supervisor

    # Several workers share their metrics through files: prometheus_client must know before
    # its first import (by observe, just below).
    metrics_dir = supervisor.prepare_metrics_dir() if config.server.workers > 1 else None
    from frontfilter.observe import setup_logging

    setup_logging(config.log.format.value, config.log.level)
    _open_files(config)                  # before the workers fork: they inherit it
    sockets = _activated_sockets(config)
    if metrics_dir is None:
        _use_uvloop()
        _serve_one(config, sockets, None)
        return EXIT_OK
    try:
        return _serve_workers(config, sockets)
    finally:
        supervisor.cleanup_metrics_dir(metrics_dir)


def _open_files(config: Any) -> None:
    """The soft RLIMIT_NOFILE raised to what the config needs (process/openfiles.py); a
    warning when even the hard limit is short of it."""
    from frontfilter import observe
    from frontfilter.process.openfiles import raise_limit, shortfall

    want, soft, _hard = raise_limit(config)
    short = shortfall(want, soft)
    if short is not None:
        observe.warning("config_warning", key="limits.max_connections", detail=short)


def _serve_one(config: Any, sockets: list[Any] | None, http_socket: Any) -> None:
    from frontfilter.config import ConfigError
    from frontfilter.delivery.queue import StartError
    from frontfilter.process.service import Service

    async def run() -> None:
        await Service(config, sockets=sockets, http_socket=http_socket).run()

    try:
        asyncio.run(run())
    except ConfigError as error:      # a certificate or users file that does not load
        raise _Fatal(*error.problems) from None
    except StartError as error:       # the spool directory
        raise _Fatal(str(error)) from None
    except OSError as error:
        raise _Fatal(f"cannot listen: {error.strerror or error}") from None


def _serve_workers(config: Any, sockets: list[Any] | None) -> int:
    """`server.workers` processes on shared sockets, under a supervisor (process/supervisor.py)."""
    from frontfilter import observe
    from frontfilter.process.service import bind_listener
    from frontfilter.process.supervisor import Supervisor

    try:
        if sockets is None:
            sockets = [bind_listener(listener.address) for listener in config.listeners]
        http_socket = bind_listener(config.metrics.listen) if config.metrics.listen is not None else None
    except OSError as error:
        raise _Fatal(f"cannot listen: {error.strerror or error}") from None

    # The supervisor's own gauge files would count as a worker that is never ready.
    observe.process_gone(os.getpid())
    # Sessions per client address, counted for the whole service: made now, inherited by each
    # worker at its fork; a worker's row is cleared when it ends (smtp/shared_counts.py).
    from frontfilter.smtp import shared_counts

    counts = shared_counts.create(config.server.workers)

    def worker_ended(pid: int, slot: int) -> None:
        counts.clear_row(slot)
        observe.process_gone(pid)

    def serve() -> int:                # in each forked worker
        observe.set_worker(os.getpid())
        _use_uvloop()
        try:
            _serve_one(config, sockets, http_socket)
        except _Fatal as error:
            error.report()
            return EXIT_ERROR
        return EXIT_OK

    return Supervisor(config.server.workers, serve, config.server.shutdown_grace,
                      log=observe.supervisor_event, on_worker_exit=worker_ended).run()


def _activated_sockets(config: Any) -> list[Any] | None:
    """Listening sockets passed by systemd (frontfilter.socket), one per configured listener
    in the config's order; None when not socket-activated (the service binds them itself)."""
    from frontfilter.process import sdnotify

    try:
        passed = sdnotify.listen_fds()
        if not passed:
            return None
        return sdnotify.assign_sockets(
            [(listener.name, listener.address.host, listener.address.port) for listener in config.listeners],
            passed)
    except sdnotify.ActivationError as error:
        raise _Fatal(f"socket activation: {error}") from None


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ---- check --------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from frontfilter.config import ConfigError, load_config
    from frontfilter.rules.loader import load_ruleset
    from frontfilter.rules.model import RuleSetError

    try:
        config = load_config(args.config)
    except ConfigError as error:
        for line in error.problems:
            print(line, file=sys.stderr)
        return EXIT_PROBLEMS
    from frontfilter.delivery.tls import backend_tls_problems
    from frontfilter.pipeline.sealing import sealing_key_problems
    from frontfilter.smtp.door import front_door_problems

    problems = front_door_problems(config) + backend_tls_problems(config)   # certificate, users, backend TLS
    arc_problems, arc_key = sealing_key_problems(config)          # the ARC sealing key
    problems += arc_problems
    if config.relay.sender_map is not None:      # the login -> senders map (policy/sendermap.py)
        from frontfilter.policy.sendermap import SenderMapError, load_sender_map

        try:
            load_sender_map(config.relay.sender_map)
        except SenderMapError as error:
            problems = list(problems) + [f"{config.path}: relay.sender_map: {p}" for p in error.problems]
    for line in problems:
        print(line, file=sys.stderr)
    rules_dir = args.rules or config.rules.dir
    if not rules_dir.is_dir():     # named by where it was given: the config's key, or --rules
        where = "--rules" if args.rules else f"{config.path}: rules.dir"
        print(f"{where}: {rules_dir}: not a directory", file=sys.stderr)
        return EXIT_PROBLEMS
    try:
        rules = load_ruleset(rules_dir)
    except RuleSetError as error:
        for line in error.errors:
            print(line, file=sys.stderr)
        return EXIT_PROBLEMS
    if problems:
        return EXIT_PROBLEMS
    from frontfilter.config import config_warnings

    for key, why in config_warnings(config):
        print(f"{config.path}: {key}: warning: {why}", file=sys.stderr)
    from frontfilter.reputation.checks import asks_dns

    if asks_dns(config):
        from frontfilter.reputation.resolver import unanswering_resolvers

        # A list's own test entry (RFC 5782 §5: 127.0.0.2 is listed) where there is one.
        probe = f"2.0.0.127.{config.dnsbl.lists[0].zone}" if config.dnsbl.lists else "."
        for problem in unanswering_resolvers(config.dns, probe):
            print(f"{config.path}: dns.resolvers: warning: {problem}: the DNS checks would fail "
                  "(dns.error)", file=sys.stderr)
    from frontfilter.config.checks import memory_bound

    print(f"{args.config}: OK ({len(rules)} rules from {rules_dir})")
    print(f"{args.config}: {memory_bound(config)}")
    from frontfilter.process.openfiles import needed, shortfall

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed(config)
    print(f"{args.config}: open files: up to {want} a worker; `serve` raises its soft limit "
          f"to that, within the hard limit ({'unlimited' if hard == resource.RLIM_INFINITY else hard} here)")
    short = shortfall(want, hard)
    if short is not None:
        print(f"{config.path}: limits.max_connections: warning: {short}", file=sys.stderr)
    if arc_key is not None:
        _print_arc_key(args.config, config, arc_key)
    return EXIT_OK


def _print_arc_key(path: Path, config: Any, key: Any) -> None:
    """What a receiver needs to check the relay's ARC seals: the record to publish."""
    from frontfilter.pipeline.sealing import dns_record, weak_key

    weak = weak_key(key)
    if weak is not None:
        print(f"{config.path}: arc.key_file: warning: {weak}", file=sys.stderr)
    print(f"{path}: arc: sealing as d={key.domain} s={key.selector} with a {key.bits}-bit key "
          f"(seal = \"{config.arc.seal.value}\"); publish this record in DNS:")
    print(dns_record(key))


# ---- scan ---------------------------------------------------------------------------------

def cmd_scan(args: argparse.Namespace) -> int:
    """The message through the relay's own pipeline (frontfilter.pipeline.dryrun): every stage, as the
    relay would decide it, with nothing sent or stored."""
    from frontfilter.pipeline import dryrun

    if args.dns and args.config is None:
        raise _Fatal("--dns needs --config (the resolvers, lists and SPF settings are there)")
    try:
        raw = sys.stdin.buffer.read() if str(args.message) == "-" else args.message.read_bytes()
    except OSError as error:
        raise _Fatal(f"{args.message}: {error.strerror}") from None
    envelope = _dry_envelope(args.sender, args.recipient, args.client_ip, args.helo, args.auth_user)
    config, rules = _dry_setup(args.config, args.rules, envelope, args.dns)
    result = dryrun.run(config, rules, as_crlf(raw), envelope)
    action = result.action
    if args.output is not None and result.decision is not None:
        decision = result.decision
        args.output.write_bytes(result.forwarded or decision.head + decision.message)
    lines = _check_lines(result, args.config is not None, args.dns)
    if args.json:
        print(json.dumps(_scan_document(result, lines), indent=2, ensure_ascii=False))
        return SCAN_EXIT.get(action, EXIT_OK)
    for line in lines:
        print(line)
    for evaluation in result.early():
        print(f"stage {evaluation.stage.value}:")
        for line in evaluation.verdict.explain():
            print(f"  {line}")
    if result.decision is not None:
        for recipient, answer in result.refused_recipients:    # the message went on without them
            print(f"recipient {recipient}: {answer.wire}")
        _print_scan(result.decision, action)
    else:
        _print_early_end(result)
    return SCAN_EXIT.get(action, EXIT_OK)


def as_crlf(raw: bytes) -> bytes:
    """Files on disk often have LF line ends; on the wire every line ends in CRLF."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _dry_envelope(sender: str, recipients: list[str] | None, client_ip: str, helo: str,
                  auth_user: str | None) -> Any:
    from frontfilter.pipeline.dryrun import DryEnvelope

    try:
        ipaddress.ip_address(client_ip)
    except ValueError:
        raise _Fatal(f"--client-ip: {client_ip!r} is not an IP address") from None
    return DryEnvelope(sender=sender, recipients=tuple(recipients or ["postmaster@example.org"]),
                       client_ip=client_ip, helo=helo, auth_user=auth_user)


def _dry_setup(config_path: Path | None, rules_dir: Path | None, envelope: Any,
               lookups: bool) -> tuple[Any, Any]:
    """The config a dry run decides with (the relay's; without one, a stand-in that takes the
    recipients' domains as its own), and the rule set."""
    from frontfilter.config import ConfigError, build_config
    from frontfilter.pipeline.dryrun import dry_config
    from frontfilter.rules.loader import load_ruleset
    from frontfilter.rules.model import RuleSetError

    if config_path is not None:
        config = _load_config(config_path)
    else:
        domains = sorted({r.rpartition("@")[2].lower() for r in envelope.recipients if "@" in r})
        try:
            config = build_config({"relay": {"domains": domains},
                                   "backend": {"servers": ["127.0.0.1:25"]}}, Path("scan.toml"))
        except ConfigError as error:
            raise _Fatal(*(f"--recipient: {p.split(': ', 1)[-1]}" for p in error.problems)) from None
    try:
        rules = load_ruleset(rules_dir or (config.rules.dir if config_path is not None else Path("rules")))
    except RuleSetError as error:
        raise _Fatal(*error.errors) from None
    return dry_config(config, lookups), rules


def _check_lines(result: Any, configured: bool, lookups: bool) -> list[str]:
    """What the reputation side knew: trust, own domains, and the DNS checks the rules read."""
    if not configured:
        return ["checks: none (no --config: the recipients' domains are taken as the relay's own)"]
    state = result.state
    checks = state.checks
    own = sorted(result.own_domains)
    lines = [f"client {state.peer.ip}: {'trusted' if checks.trusted else 'not trusted'}; own domains: "
             f"{', '.join(own) or 'none'}"]
    if not lookups:
        lines.append("dns checks: not made (add --dns to ask the configured resolvers)")
        return lines
    if checks.listing is not None:
        listed = result.event("dnsbl") or {}
        answers = ", ".join(f"{name}={answer}" for name, answer in (listed.get("lists") or {}).items())
        lines.append(f"dnsbl: score {checks.listing.score}"
                     f"{' (threshold reached)' if checks.listing.over_threshold else ''}: "
                     f"{answers or 'not listed'}")
    else:
        lines.append("dnsbl: not looked up (no [dnsbl] lists, no rule reads it, or a trusted client)")
    if checks.spf is not None:
        spf = checks.spf
        lines.append(f"spf: {spf.result.value} ({spf.identity} {spf.domain}) {spf.explanation}".rstrip())
    else:
        lines.append("spf: not evaluated ([spf] off, no rule reads it, or a client of ours)")
    return lines


def _print_early_end(result: Any) -> None:
    """How a message that never reached the content rules ended."""
    if result.refused_by_policy:
        why = f" ({result.decided_by})" if result.decided_by else ""
        print(f"relay policy at {result.stage.value}: {result.reply.wire}{why}: the relay would not "
              f"have received the message")
    elif result.stage.value != "data":
        print(f"(decided at stage {result.stage.value}, before the message: the relay would not "
              f"have received it)")
    print(f"verdict: {result.action} ({result.reply.wire})")


def _scan_document(result: Any, check_lines: list[str]) -> dict[str, Any]:
    document: dict[str, Any] = {"verdict": result.action, "reply": result.reply.wire,
                                "decided_by": result.decided_by}
    if result.decision is not None:
        document = _scan_json(result.decision, result.action) | document
    document |= {"stage": result.stage.value, "relay_verdict": result.verdict, "checks": check_lines,
                 "refused_recipients": [{"recipient": r, "reply": a.wire} for r, a in result.refused_recipients]}
    document["early"] = [{"stage": e.stage.value, "recipient": e.recipient, "matches": [
        {"rule": m.rule, "action": m.action.value, "mode": m.mode.value, "reasons": list(m.reasons)}
        for m in e.verdict.matches], "decision": e.verdict.action.value if e.verdict.action else None,
        "reply": e.verdict.reply.wire if e.verdict.reply else None} for e in result.early()]
    return document


def cmd_test(args: argparse.Namespace) -> int:
    """Each message of the corpus through the relay's own pipeline, against its sidecar."""
    from frontfilter.pipeline import dryrun
    from frontfilter.tools import corpus

    if args.dns and args.config is None:
        raise _Fatal("--dns needs --config (the resolvers, lists and SPF settings are there)")
    try:
        cases = corpus.load_cases(args.corpus)
    except corpus.CorpusError as error:
        raise _Fatal(*error.problems) from None
    setups: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def decide(raw: bytes, envelope: Any) -> Any:
        # Without --config the stand-in config depends on the recipients' domains.
        key = () if args.config is not None else envelope.recipients
        if key not in setups:
            setups[key] = _dry_setup(args.config, args.rules, envelope, args.dns)
        config, rules = setups[key]
        return dryrun.run(config, rules, as_crlf(raw), envelope)

    try:
        outcomes = corpus.run_corpus(cases, decide)
    except OSError as error:
        raise _Fatal(f"{error.filename}: {error.strerror}") from None
    for outcome in outcomes:
        if not outcome.passed:
            print(outcome.line(args.corpus))
        elif args.verbose:
            print(f"{corpus.relative(outcome.case.message, args.corpus)}: ok ({outcome.verdict}; rules fired: "
                  f"{', '.join(outcome.rules) or 'none'})")
    failed = sum(not o.passed for o in outcomes)
    if args.junit is not None:
        try:
            args.junit.write_bytes(corpus.junit(outcomes, args.corpus))
        except OSError as error:
            raise _Fatal(f"--junit {args.junit}: {error.strerror}") from None
    print(f"{len(outcomes)} messages: {len(outcomes) - failed} as expected, {failed} not")
    return EXIT_PROBLEMS if failed else EXIT_OK


def _scan_json(decision: Any, action: str) -> dict[str, Any]:
    import dataclasses

    verdict = decision.verdict
    return {
        "verdict": action,
        "reply": verdict.reply.wire if verdict.reply else None,
        "decided_by": verdict.rule,
        "antivirus": decision.antivirus.log_fields() if decision.antivirus is not None else None,
        "parts": [{k: (sorted(r.value for r in v) if k == "uninspectable" else v)
                   for k, v in dataclasses.asdict(p).items()} for p in decision.view.parts],
        "limits_exceeded": sorted(limit.value for limit in decision.view.limits_exceeded),
        "ambiguities": sorted(a.value for a in decision.view.ambiguities),
        "matches": [{"rule": m.rule, "action": m.action.value, "mode": m.mode.value,
                     "parts": list(m.parts), "reasons": list(m.reasons)} for m in verdict.matches],
        "stripped": [{"part": o.mime_path, "rule": o.rule} for o in decision.stripped],
        "headers_added": [list(h) for h in verdict.headers],
        "tags": list(verdict.tags),
    }


def _print_scan(decision: Any, action: str) -> None:
    view = decision.view
    print(f"message: {view.size} bytes, subject {view.subject!r}")
    print("parts:")
    for part in view.parts:
        indent = "  " * (part.path.count(".") + part.path.count("/") + 1)
        name = f" {part.filename!r}" if part.filename else ""
        flags = [flag for flag in ("type_mismatch", "encrypted", "has_macros", "bidi_control",
                                   "pdf_active_content", "html_script", "uuencoded")
                 if getattr(part, flag, False)]
        flags += [f"uninspectable: {reason}" for reason in sorted(r.value for r in part.uninspectable)]
        print(f"{indent}{part.path}{name} declared={part.declared_type} detected={part.detected_type} "
              f"size={part.size}" + (f" [{', '.join(flags)}]" if flags else ""))
    for limit in sorted(limit.value for limit in view.limits_exceeded):
        print(f"limit exceeded: {limit}")
    for ambiguity in sorted(a.value for a in view.ambiguities):
        print(f"ambiguity: {ambiguity}")
    if decision.antivirus is not None:
        print(f"antivirus: {decision.antivirus.describe()} ({decision.antivirus.seconds * 1000:.1f} ms)")
    print("rules:" if decision.verdict.matches else "rules: none matched")
    for line in decision.verdict.explain():
        print(f"  {line}")
    for order in decision.stripped:
        print(f"stripped: part {order.mime_path} (rule {order.rule})")
    reply = f" ({decision.verdict.reply.wire})" if decision.verdict.reply else ""
    print(f"verdict: {action}{reply}")


# ---- passwd -------------------------------------------------------------------------------

def cmd_passwd(args: argparse.Namespace) -> int:
    from frontfilter.smtp import passwd

    problem = passwd.check_name(args.user)
    if problem is not None:
        raise _Fatal(f"{args.user!r}: {problem}")
    try:
        if args.delete:
            if not passwd.set_user(args.file, args.user, None):
                raise _Fatal(f"{args.file}: no user {args.user!r}")
            print(f"{args.file}: removed {args.user}")
            return EXIT_OK
        password = _read_password()
        problem = passwd.check_password(password)
        if problem is not None:
            raise _Fatal(problem)
        existed = passwd.set_user(args.file, args.user, passwd.hash_password(password))
    except passwd.UsersFileError as error:
        raise _Fatal(*error.problems) from None
    except OSError as error:
        raise _Fatal(f"{error.filename or args.file}: {error.strerror or error}") from None
    print(f"{args.file}: {'changed' if existed else 'added'} {args.user} (the relay reads it on SIGHUP: "
          "systemctl reload frontfilter; where the unit hands the file over with LoadCredential, "
          "systemd copies it only at start: systemctl restart frontfilter)")
    return EXIT_OK


def _read_password() -> bytes:
    """Twice from the terminal, or one line from stdin (scripts, configuration management)."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise _Fatal("the two passwords differ; nothing changed")
        return first.encode("utf-8")
    line = sys.stdin.buffer.readline()
    return line.removesuffix(b"\n").removesuffix(b"\r")


# ---- queue --------------------------------------------------------------------------------

def _queue_parser(sub: Any) -> None:
    test = sub.add_parser("test", help="run a corpus of messages with expected outcomes through the "
                          "rules (regression tests for rule edits)")
    test.add_argument("corpus", type=Path, help="a folder of .eml files, each with a .toml sidecar "
                      "(verdict, rules, stripped, envelope)")
    test.add_argument("--config", "-c", type=Path, help="config (rules dir, limits, relay policy)")
    test.add_argument("--rules", type=Path, help="rules dir (default: from --config, else ./rules)")
    test.add_argument("--junit", type=Path, help="also write a JUnit XML report here")
    test.add_argument("--dns", action="store_true", help="ask the configured resolvers (needs --config)")
    test.add_argument("--verbose", "-v", action="store_true", help="a line for each message, passed too")
    test.set_defaults(run=cmd_test)

    queue = sub.add_parser("queue", help="list, show, retry or delete spooled mail (safe while "
                           "the relay runs)")
    queue.add_argument("--config", "-c", type=Path)
    # --config before or after the action; SUPPRESS keeps the action's default from hiding it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS)
    actions = queue.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="every queued message and its recipients")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = actions.add_parser("show", parents=[common], help="one message: envelope, state, content")
    show.add_argument("id")
    retry = actions.add_parser("retry", parents=[common], help="try these messages now (none: all)")
    retry.add_argument("ids", nargs="*", metavar="ID")
    delete = actions.add_parser("delete", parents=[common], help="remove messages (no bounce is sent)")
    delete.add_argument("ids", nargs="+", metavar="ID")
    queue.set_defaults(run=cmd_queue)


def cmd_queue(args: argparse.Namespace) -> int:
    import time

    from frontfilter.tools import queuectl
    from frontfilter.delivery.spool import Layout, SpoolFormatError

    if args.config is None:
        raise _Fatal("queue: --config FILE is needed (it says where the spool is)")
    layout = Layout(_load_config(args.config).spool.dir)
    try:
        if args.action == "list":
            listed, problems = queuectl.list_queue(layout)
            if args.json:
                print(json.dumps(queuectl.list_json(listed), indent=2, ensure_ascii=False))
            else:
                dead = queuectl.dead_letter_count(layout)
                print("\n".join(queuectl.format_list(listed, problems, dead, time.time())))
            return EXIT_PROBLEMS if problems else EXIT_OK
        if args.action == "show":
            lines, body = queuectl.show(layout, args.id)
            print("\n".join(lines) + "\n", flush=True)
            sys.stdout.buffer.write(body)
            sys.stdout.buffer.flush()
            return EXIT_OK
        if args.action == "retry":
            lines, ok = queuectl.retry(layout, args.ids)
        else:
            lines, ok = queuectl.delete(layout, args.ids)
        print("\n".join(lines))
        return EXIT_OK if ok else EXIT_PROBLEMS
    except (queuectl.QueueToolError, SpoolFormatError) as error:
        raise _Fatal(str(error)) from None
    except OSError as error:
        raise _Fatal(f"{layout.root}: {error.strerror or error}") from None


# ---- quarantine ---------------------------------------------------------------------------

def _quarantine_parser(sub: Any) -> None:
    quarantine = sub.add_parser("quarantine", help="list, show, release, delete or expire held mail "
                                "(safe while the relay runs)")
    quarantine.add_argument("--config", "-c", type=Path)
    common = argparse.ArgumentParser(add_help=False)      # --config after the action too
    common.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS)
    actions = quarantine.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="every held message, oldest first")
    listing.add_argument("--json", action="store_true", help="machine-readable output (a JSON array)")
    show = actions.add_parser("show", parents=[common], help="one message: envelope, rule and reasons, "
                              "parts, header block")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    release = actions.add_parser("release", parents=[common], help="send messages on, as received, "
                                 "with one X-Frontfilter-Released field added")
    release.add_argument("ids", nargs="+", metavar="ID")
    release.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                         help="release to this address instead of the original recipients (repeatable; "
                         "needed for a legacy .eml file)")
    release.add_argument("--rescan", action="store_true", help="through the current rules first: "
                         "released (as they would forward it) only if they would forward it")
    delete = actions.add_parser("delete", parents=[common], help="remove messages for good")
    delete.add_argument("ids", nargs="+", metavar="ID")
    actions.add_parser("expire", parents=[common], help="apply quarantine.max_age and max_size now")
    quarantine.set_defaults(run=cmd_quarantine)


def cmd_quarantine(args: argparse.Namespace) -> int:
    from frontfilter.tools import quarantinectl as ctl

    if args.config is None:
        raise _Fatal("quarantine: --config FILE is needed (it says where the quarantine is)")
    config = _load_config(args.config)
    ids = getattr(args, "ids", None) or ([args.id] if getattr(args, "id", None) else [])
    try:
        result = ctl.run(config, args.action, ids, to=getattr(args, "to", []),
                         rescan=getattr(args, "rescan", False), as_json=getattr(args, "json", False))
    except ctl.QuarantineToolError as error:
        raise _Fatal(str(error)) from None
    print("\n".join(result.lines))
    return EXIT_OK if result.ok else EXIT_PROBLEMS


# ---- sink ---------------------------------------------------------------------------------

def cmd_sink(args: argparse.Namespace) -> int:
    from frontfilter.config import parse_host_port
    from frontfilter.tools.sink import MaildirSink, sink_protocol
    from frontfilter.smtp.server import bind

    try:
        address = parse_host_port(args.listen)
    except ValueError as error:
        raise _Fatal(f"--listen: {error}") from None
    handler = MaildirSink(args.maildir)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: sink_protocol(handler), sock=bind(address))
        print(f"sink: listening on {address}, storing mail in {args.maildir}", flush=True)
        stop = asyncio.Event()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(run())
    except OSError as error:
        raise _Fatal(f"cannot listen on {address}: {error.strerror or error}") from None
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
