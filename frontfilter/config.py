"""frontfilter.toml -> frozen dataclasses.

Guarantees: every key is known, typed and checked before anything starts. Unknown keys (with a
"did you mean" hint), wrong types, bad sizes, durations, addresses and networks are reported as
`FILE: section.key: problem`, all of them at once, in a `ConfigError`. TOML itself refuses
duplicate keys (reported with their line). Relative paths are relative to the config file's
folder, so a config means the same thing whatever the working directory of the process.

Config knows nothing of the other layers: it imports only `model`, `reply` and `units`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontfilter.units import MINUTES, MiB, SECONDS, parse_duration, parse_size


class ConfigError(Exception):
    """One or more problems, each a line `FILE: key: problem`."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object) -> HostPort:
    """"127.0.0.1:2525", "[::1]:2525", "mx.example.org:25"."""
    if not isinstance(value, str):
        raise ValueError(f"expected \"host:port\", got {type(value).__name__}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (IPv6 as [::1]:2525)")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    return HostPort(host, int(port))


def parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as 192.0.2.0/24, got {type(value).__name__}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (e.g. 192.0.2.0/24, 2001:db8::/32)") from None


def parse_domain(value: object) -> str:
    """A relay domain, lower-case, without a trailing dot; IDNs in their A-label form."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a domain name")
    domain = value.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{value!r} is not a valid domain name") from None
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels) or any(len(label) > 63 for label in labels):
        raise ValueError(f"{value!r} is not a fully qualified domain name")
    return domain


class BackendMode(enum.Enum):
    SYNC = "sync"    # 250 only once the backend accepted (before-queue, like a Postfix proxy)
    QUEUE = "queue"  # 250 once durably spooled; a worker delivers (store-and-forward)


class LogFormat(enum.Enum):
    JSON = "json"
    TEXT = "text"


# Field metadata: how to convert a raw TOML value. Default conversion follows the annotation.
def _conv(fn: Any, **kw: Any) -> Any:
    return field(metadata={"convert": fn}, **kw)


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    listen: tuple[HostPort, ...] = _conv(parse_host_port, default=(HostPort("127.0.0.1", 2525),))
    # RFC 5321 §4.5.3.1.7 asks servers to take at least 100 recipients.
    max_message_size: int = _conv(parse_size, default=25 * MiB)
    max_recipients: int = 100
    # RFC 5321 §4.5.3.1.6: 998 octets of text per line; longer lines are refused, not folded,
    # because folding would change the message the recipient signed (DKIM).
    max_line_length: int = 998
    max_commands: int = 1000                 # per session: a client looping is not mail
    max_errors: int = 10                     # protocol errors per session, then 421 and close
    command_timeout: float = _conv(parse_duration, default=5 * MINUTES)   # RFC 5321 §4.5.3.2
    data_timeout: float = _conv(parse_duration, default=10 * MINUTES)     # whole DATA phase
    session_timeout: float = _conv(parse_duration, default=30 * MINUTES)  # whole connection
    shutdown_grace: float = _conv(parse_duration, default=30 * SECONDS)
    smtputf8: bool = True


@dataclass(frozen=True)
class RelayConfig:
    domains: tuple[str, ...] = _conv(parse_domain, default=())
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _conv(
        parse_network, default=())


@dataclass(frozen=True)
class BackendConfig:
    servers: tuple[HostPort, ...] = _conv(parse_host_port, default=())
    mode: BackendMode = BackendMode.SYNC
    connect_timeout: float = _conv(parse_duration, default=10 * SECONDS)
    timeout: float = _conv(parse_duration, default=2 * MINUTES)    # per SMTP command
    helo_name: str = ""                                            # default: server.hostname


@dataclass(frozen=True)
class SpoolConfig:
    dir: Path = Path("var/spool")


@dataclass(frozen=True)
class RulesConfig:
    dir: Path = Path("rules")
    soft_reject: bool = False          # turn every 5xx into 4xx while a rule set is on trial
    watch: bool = True                 # reload when a rule file changes on disk
    watch_interval: float = _conv(parse_duration, default=2 * SECONDS)


@dataclass(frozen=True)
class InspectionConfig:
    """Bounds of the content walk; see frontfilter/content/limits.py for each reason."""

    timeout: float = _conv(parse_duration, default=30 * SECONDS)
    max_depth: int = 20
    max_parts: int = 500
    max_header_bytes: int = _conv(parse_size, default=256 * 1024)
    max_decoded_bytes: int = _conv(parse_size, default=100 * MiB)
    max_archive_depth: int = 3
    max_archive_members: int = 1000
    max_expanded_size: int = _conv(parse_size, default=200 * MiB)
    max_compression_ratio: int = 100
    text_bytes: int = _conv(parse_size, default=1 * MiB)


class QuarantineOutcome(enum.Enum):
    REJECT = "reject"   # the client is refused (the rule's reply); a copy is kept
    ACCEPT = "accept"   # the client gets 250; the copy is kept and nothing is forwarded


@dataclass(frozen=True)
class QuarantineConfig:
    dir: Path = Path("var/quarantine")
    then: QuarantineOutcome = QuarantineOutcome.REJECT


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort | None = _conv(parse_host_port, default=None)


@dataclass(frozen=True)
class LogConfig:
    format: LogFormat = LogFormat.JSON
    level: str = "info"


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    relay: RelayConfig
    backend: BackendConfig
    spool: SpoolConfig
    rules: RulesConfig
    inspection: InspectionConfig
    quarantine: QuarantineConfig
    metrics: MetricsConfig
    log: LogConfig


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "relay": RelayConfig,
    "backend": BackendConfig,
    "spool": SpoolConfig,
    "rules": RulesConfig,
    "inspection": InspectionConfig,
    "quarantine": QuarantineConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(path: str | Path) -> Config:
    """Read, check and freeze a config file. Raises ConfigError listing every problem."""
    path = Path(path)
    label = str(path)
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{label}: file not found"]) from None
    except OSError as error:
        raise ConfigError([f"{label}: cannot read: {error.strerror}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{label}: {error}"]) from None
    return build_config(raw, path)


def build_config(raw: dict[str, Any], path: Path) -> Config:
    label = str(path)
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in _SECTIONS:
            problems.append(f"{label}: {key}: unknown section{_hint(key, _SECTIONS)}")
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{label}: {name}: expected a table [{name}]")
            table = {}
        sections[name] = _build_section(cls, name, table, label, problems)
    if not problems:
        problems.extend(_cross_checks(sections, label))
    if problems:
        raise ConfigError(problems)
    base = path.resolve().parent
    for name in ("spool", "rules", "quarantine"):
        sections[name] = dataclasses.replace(sections[name], dir=_resolve(base, sections[name].dir))
    return Config(path=path.resolve(), **sections)


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()


def _cross_checks(sections: dict[str, Any], label: str) -> list[str]:
    problems = []
    server: ServerConfig = sections["server"]
    if not server.listen:
        problems.append(f"{label}: server.listen: at least one address is needed")
    if not sections["backend"].servers:
        problems.append(f"{label}: backend.servers: at least one backend is needed")
    if server.max_recipients < 1:
        problems.append(f"{label}: server.max_recipients: must be at least 1")
    if server.max_message_size < 1024:
        problems.append(f"{label}: server.max_message_size: must be at least 1KiB")
    if server.max_line_length < 78:
        problems.append(f"{label}: server.max_line_length: must be at least 78")
    if sections["log"].level not in _LOG_LEVELS:
        problems.append(f"{label}: log.level: must be one of {', '.join(_LOG_LEVELS)}")
    return problems


def _build_section(cls: type, section: str, table: dict[str, Any], label: str,
                   problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{label}: {section}.{key}"
        if key not in fields:
            problems.append(f"{where}: unknown key{_hint(key, fields)}")
            continue
        try:
            values[key] = _convert(value, hints[key], fields[key].metadata.get("convert"))
        except ValueError as error:
            problems.append(f"{where}: {error}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # only reachable through a programming error
        problems.append(f"{label}: {section}: {error}")
        return cls()


def _convert(value: Any, hint: Any, converter: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):  # a single value where a list is expected: accept it
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_type_name(value)}")
        item_hint = typing.get_args(hint)[0]
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_convert(item, item_hint, converter))
            except ValueError as error:
                raise ValueError(f"item {index + 1}: {error}") from None
        return tuple(items)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value == "" and type(None) in typing.get_args(hint):
            return None
        return _convert(value, args[0] if len(args) == 1 else str, converter)
    if converter is not None:
        return converter(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = [member.value for member in hint]
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return hint(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_type_name(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_type_name(value)}")
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_type_name(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a path")
        return Path(value)
    raise ValueError(f"unsupported value {value!r}")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _hint(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
