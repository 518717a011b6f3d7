"""frontfilter.toml -> frozen dataclasses.

Guarantees: every key is known, typed and checked before anything starts. Unknown keys (with a
"did you mean" hint), wrong types, bad sizes, durations, addresses and networks are reported as
`FILE: section.key: problem`, all of them at once, in a `ConfigError`. TOML itself refuses
duplicate keys (reported with their line). Relative paths are relative to the config file's
folder, so a config means the same thing whatever the working directory of the process.

The rooms of this package, by job:
- `values`: one value at a time (host:port, networks, domains, DNS list specs, reply codes);
- `sections`: one dataclass per `[section]`, its keys and defaults, and `Config`;
- `checks`: what no single key says (combinations refused, settings that work but hurt);
- `loader`: the file -> `Config`, every problem at once.

Config knows nothing of the other layers: it imports only `units`.
"""

from frontfilter.config.checks import CREDENTIALS_ROOT, config_warnings, credential_files_not_there_yet
from frontfilter.config.loader import build_config, load_config
from frontfilter.config.sections import (
    OPEN_RELAY_CONFIRMATION, AntivirusConfig, ArcConfig, ArcSeal, AuthConfig, AuthMode, BackendConfig, BackendMode,
    BackendTls, Config, DkimConfig, DmarcConfig, DnsblConfig, DnsConfig, GreylistConfig, InspectionConfig, LimitsConfig,
    ListenerConfig, LogConfig, LogFormat, MetricsConfig, OnError, OutboundSenders, ProxyConfig,
    QuarantineConfig, QuarantineOutcome, RelayConfig, RulesConfig, ServerConfig, SpfConfig,
    SpoolConfig, TlsConfig, TlsMode, TlsVersion
)
from frontfilter.config.values import (
    ConfigError, DnsListConfig, HostPort, ReplyCode, parse_dns_list, parse_host_port, parse_network,
    parse_workers
)

__all__ = [
    "CREDENTIALS_ROOT", "OPEN_RELAY_CONFIRMATION", "AntivirusConfig", "ArcConfig", "ArcSeal", "AuthConfig", "AuthMode", "BackendConfig",
    "BackendMode", "BackendTls", "Config", "ConfigError", "DkimConfig", "DmarcConfig", "DnsConfig", "DnsListConfig", "DnsblConfig",
    "GreylistConfig", "HostPort", "InspectionConfig", "LimitsConfig", "ListenerConfig", "LogConfig", "LogFormat",
    "MetricsConfig", "OnError", "OutboundSenders", "ProxyConfig", "QuarantineConfig", "QuarantineOutcome",
    "RelayConfig", "ReplyCode", "RulesConfig", "ServerConfig", "SpfConfig", "SpoolConfig", "TlsConfig", "TlsMode",
    "TlsVersion", "build_config", "config_warnings", "credential_files_not_there_yet", "load_config",
    "parse_dns_list", "parse_host_port", "parse_network", "parse_workers",
]
