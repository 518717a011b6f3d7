"""The `frontfilter` command. The only code that prints to the administrator or exits.

Every failure an administrator can cause (a bad config, a bad rule, a missing file, a port in
use) ends with readable lines on stderr and a non-zero exit — never a traceback.

Exit codes: 0 ok; 1 `check` found problems; 2 usage or start-up error;
`scan`: 0 accept, 1 reject, 2 error, 3 tempfail, 4 discard, 5 quarantine.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from frontfilter import __version__

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2
SCAN_EXIT = {"accept": 0, "reject": 1, "tempfail": 3, "discard": 4, "quarantine": 5}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return EXIT_ERROR
    except _Fatal as error:
        for line in error.lines:
            print(f"frontfilter: {line}", file=sys.stderr)
        return EXIT_ERROR


class _Fatal(Exception):
    def __init__(self, *lines: str):
        self.lines = lines


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
    scan.add_argument("--output", "-o", type=Path, help="write the rewritten message here")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.set_defaults(run=cmd_scan)

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
    from frontfilter.observe import setup_logging
    from frontfilter.service import Service

    setup_logging(config.log.format.value, config.log.level)
    _use_uvloop()

    async def run() -> None:
        await Service(config).run()

    try:
        asyncio.run(run())
    except OSError as error:
        raise _Fatal(f"cannot listen: {error.strerror or error}") from None
    return EXIT_OK


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
    rules_dir = args.rules or config.rules.dir
    try:
        rules = load_ruleset(rules_dir)
    except RuleSetError as error:
        for line in error.errors:
            print(line, file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{args.config}: OK ({len(rules)} rules from {rules_dir})")
    return EXIT_OK


# ---- scan ---------------------------------------------------------------------------------

def cmd_scan(args: argparse.Namespace) -> int:
    import dataclasses

    from frontfilter.config import InspectionConfig
    from frontfilter.content.limits import InspectionLimits
    from frontfilter.decision import decide
    from frontfilter.model import EnvelopeFacts, Peer, SessionFacts, Stage
    from frontfilter.rules.facts import Facts
    from frontfilter.rules.loader import load_ruleset
    from frontfilter.rules.model import RuleSetError

    inspection = InspectionConfig()
    rules_dir = args.rules or Path("rules")
    if args.config is not None:
        config = _load_config(args.config)
        inspection = config.inspection
        rules_dir = args.rules or config.rules.dir
    try:
        rules = load_ruleset(rules_dir)
    except RuleSetError as error:
        raise _Fatal(*error.errors) from None
    try:
        raw = sys.stdin.buffer.read() if str(args.message) == "-" else args.message.read_bytes()
    except OSError as error:
        raise _Fatal(f"{args.message}: {error.strerror}") from None
    try:
        ip = ipaddress.ip_address(args.client_ip)
    except ValueError:
        raise _Fatal(f"--client-ip: {args.client_ip!r} is not an IP address") from None
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")   # files on disk often have LF
    recipients = tuple(args.recipient or ["postmaster@example.org"])
    facts = Facts(stage=Stage.DATA, session=SessionFacts(peer=Peer(ip, 25), helo=args.helo),
                  envelope=EnvelopeFacts(sender=args.sender, recipients=recipients))
    limits = InspectionLimits(**{f.name: getattr(inspection, f.name)
                                 for f in dataclasses.fields(InspectionLimits)})
    decision = decide(raw, facts, rules, limits)
    action = decision.verdict.action.value if decision.verdict.action else "accept"
    if args.output is not None:
        args.output.write_bytes(decision.message)
    if args.json:
        print(json.dumps(_scan_json(decision, action), indent=2, ensure_ascii=False))
    else:
        _print_scan(decision, action)
    return SCAN_EXIT.get(action, EXIT_OK)


def _scan_json(decision: Any, action: str) -> dict[str, Any]:
    import dataclasses

    verdict = decision.verdict
    return {
        "verdict": action,
        "reply": verdict.reply.wire if verdict.reply else None,
        "decided_by": verdict.rule,
        "parts": [{k: v for k, v in dataclasses.asdict(p).items()} for p in decision.view.parts],
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
        print(f"{indent}{part.path}{name} declared={part.declared_type} detected={part.detected_type} "
              f"size={part.size}" + (f" [{', '.join(flags)}]" if flags else ""))
    for limit in sorted(limit.value for limit in view.limits_exceeded):
        print(f"limit exceeded: {limit}")
    for ambiguity in sorted(a.value for a in view.ambiguities):
        print(f"ambiguity: {ambiguity}")
    print("rules:" if decision.verdict.matches else "rules: none matched")
    for line in decision.verdict.explain():
        print(f"  {line}")
    for order in decision.stripped:
        print(f"stripped: part {order.mime_path} (rule {order.rule})")
    reply = f" ({decision.verdict.reply.wire})" if decision.verdict.reply else ""
    print(f"verdict: {action}{reply}")


# ---- sink ---------------------------------------------------------------------------------

def cmd_sink(args: argparse.Namespace) -> int:
    from frontfilter.config import parse_host_port
    from frontfilter.sink import MaildirSink, sink_protocol
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
