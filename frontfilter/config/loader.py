"""frontfilter.toml -> Config: every key known, typed and checked, every problem reported at
once (`ConfigError`), relative paths resolved against the config file's folder."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from frontfilter.config.checks import cross_checks, front_door_checks
from frontfilter.config.sections import (
    AntivirusConfig,
    ArcConfig,
    AuthConfig,
    BackendConfig,
    Config,
    DkimConfig,
    DmarcConfig,
    DnsblConfig,
    DnsConfig,
    GreylistConfig,
    InspectionConfig,
    LimitsConfig,
    ListenerConfig,
    LogConfig,
    MetricsConfig,
    ProxyConfig,
    QuarantineConfig,
    RelayConfig,
    RulesConfig,
    ServerConfig,
    SpfConfig,
    SpoolConfig,
    TlsConfig,
    TlsMode,
)
from frontfilter.config.values import ConfigError, type_name


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
    "tls": TlsConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "proxy": ProxyConfig,
    "antivirus": AntivirusConfig,
    "dns": DnsConfig,
    "dnsbl": DnsblConfig,
    "spf": SpfConfig,
    "dkim": DkimConfig,
    "dmarc": DmarcConfig,
    "greylist": GreylistConfig,
    "arc": ArcConfig,
}


# Sections that switch a feature on by being present: absent, their Config field is None.
_OPTIONAL_SECTIONS = frozenset({"antivirus"})




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
        if key not in _SECTIONS and key != "listener":
            problems.append(f"{label}: {key}: unknown section{_hint(key, _SECTIONS)}")
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{label}: {name}: expected a table [{name}]")
            table = {}
        sections[name] = _build_section(cls, name, table, label, problems)
    for name in _OPTIONAL_SECTIONS - raw.keys():
        sections[name] = None
    listeners = _build_listeners(raw, label, problems)
    if listeners and isinstance(raw.get("server"), dict) and "listen" in raw["server"]:
        problems.append(f"{label}: server.listen: use either server.listen or [[listener]] tables, not both")
    if not problems:
        problems.extend(cross_checks(sections, label))
        given = bool(listeners)
        listeners = _resolve_listeners(raw, sections, listeners)
        problems.extend(front_door_checks(sections, listeners, label))
        if given:     # server.listen then says where the [[listener]] tables listen, not its default
            sections["server"] = dataclasses.replace(
                sections["server"], listen=tuple(listener.address for listener in listeners))
    if problems:
        raise ConfigError(problems)
    base = path.resolve().parent
    for name in ("spool", "rules", "quarantine"):
        sections[name] = dataclasses.replace(sections[name], dir=_resolve(base, sections[name].dir))
    for name in ("tls", "auth", "backend"):
        sections[name] = _resolve_files(base, sections[name])
    for name in ("relay", "greylist", "arc"):      # relay.sender_map, greylist.database, arc.key_file
        sections[name] = _resolve_files(base, sections[name])
    sections["antivirus"] = _resolve_antivirus(base, sections["antivirus"], sections["server"])
    return Config(path=path.resolve(), listeners=listeners, **sections)


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()


def _resolve_antivirus(base: Path, antivirus: AntivirusConfig | None,
                       server: ServerConfig) -> AntivirusConfig | None:
    """A relative socket path is relative to the config file; max_size defaults to the server's."""
    if antivirus is None:
        return None
    address = antivirus.address
    if isinstance(address, Path):
        address = _resolve(base, address)
    max_size = server.max_message_size if antivirus.max_size is None else antivirus.max_size
    return dataclasses.replace(antivirus, address=address, max_size=max_size)


def _build_listeners(raw: dict[str, Any], label: str, problems: list[str]) -> tuple[ListenerConfig, ...]:
    tables = raw.get("listener", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(f"{label}: listener: expected [[listener]] tables")
        return ()
    listeners = []
    for index, table in enumerate(tables, 1):
        section = f"listener[{index}]"
        listener = _build_section(ListenerConfig, section, table, label, problems)
        if "address" not in table:
            problems.append(f"{label}: {section}.address: missing (e.g. \"0.0.0.0:25\")")
        listeners.append(listener)
    return tuple(listeners)


def _resolve_listeners(raw: dict[str, Any], sections: dict[str, Any],
                       listeners: tuple[ListenerConfig, ...]) -> tuple[ListenerConfig, ...]:
    """[[listener]] tables, or server.listen as inbound listeners; default TLS mode filled in."""
    if not listeners:
        listeners = tuple(ListenerConfig(address=a) for a in sections["server"].listen)
    default_tls = TlsMode.STARTTLS if sections["tls"].cert_file is not None else TlsMode.NONE
    return tuple(dataclasses.replace(
        listener, name=listener.name or str(listener.address),
        tls=listener.tls if listener.tls is not None else default_tls) for listener in listeners)


def _resolve_files(base: Path, section: Any) -> Any:
    """Every Path field of a section made absolute, relative to the config file's folder."""
    changes = {f.name: _resolve(base, getattr(section, f.name)) for f in dataclasses.fields(section)
               if isinstance(getattr(section, f.name), Path)}
    return dataclasses.replace(section, **changes) if changes else section


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
            raise ValueError(f"expected a list, got {type_name(value)}")
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
            raise ValueError(f"expected true or false, got {type_name(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {type_name(value)}")
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type_name(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a path")
        return Path(value)
    raise ValueError(f"unsupported value {value!r}")



def _hint(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
