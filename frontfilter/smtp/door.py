"""The front door: what every listener of one running relay shares.

One `FrontDoor` is built by the service from the config: the connection counters (one table for
all listeners, so a client cannot double its share by using two ports), the AUTH checker with
its lockout table, the current server certificate (replaced on SIGHUP), and whom to believe
about PROXY headers. Each `SmtpSession` gets it plus its own `ListenerConfig`.

`open_front_door` reads the certificate and the users file at start (a file that does not load
stops the start, naming file and key); `reload_front_door` reads them again on SIGHUP and keeps
the previous one of each that fails; `front_door_problems` is the same check for `frontfilter
check`. All file reading happens in worker threads. (The backend's TLS files are the delivery
side's: delivery/tls.py.)
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from frontfilter import observe
from frontfilter.config import Config, ConfigError, TlsMode, credential_files_not_there_yet
from frontfilter.mapped import unnamed_file
from frontfilter.model import IPAddress, Peer
from frontfilter.smtp.passwd import ScryptHash, UsersFileError, load_users
from frontfilter.smtp.auth import Authenticator
from frontfilter.smtp import shared_counts
from frontfilter.smtp.budget import DataBudget
from frontfilter.smtp.limits import ConnectionLimits, Network
from frontfilter.smtp.tls import CertificateProblem, ServerCertificate, read_certificate, server_context


@dataclass
class FrontDoor:
    limits: ConnectionLimits
    certificate: ServerCertificate | None = None
    authenticator: Authenticator | None = None
    proxy_networks: tuple[Network, ...] = ()
    proxy_timeout: float = 10.0
    tarpit_after: int = 0          # errors answered at full speed in one session
    tarpit_delay: float = 0.0      # seconds before each later error reply
    min_data_rate: int = 0         # bytes per second a client's turn may not fall under (0: off)
    min_data_rate_grace: float = 0.0   # seconds of a turn before its rate is judged
    data_budget: DataBudget | None = None   # DATA held in memory by this process (smtp/budget.py)
    spill_size: int = 0            # DATA past this goes to a file of its own (smtp/data.py)
    spill_dir: Path | None = None  # where: the spool's directory (None: the system's temp dir)

    def spill(self) -> IO[bytes]:
        """A file for one message's DATA: unnamed where the system allows (O_TMPFILE), so
        nothing is left behind by a crash; readable by the relay's user only."""
        return unnamed_file(self.spill_dir, "data-")

    @classmethod
    def from_config(cls, config: Config, certificate: ServerCertificate | None = None,
                    authenticator: Authenticator | None = None) -> FrontDoor:
        limits = config.limits
        return cls(
            limits=ConnectionLimits(
                max_connections=limits.max_connections, max_per_ip=limits.max_connections_per_ip,
                rate_per_ip=limits.connection_rate_per_ip, rate_window=limits.connection_rate_window,
                exempt=config.relay.trusted_networks, shared=shared_counts.for_this_worker()),
            certificate=certificate, authenticator=authenticator,
            proxy_networks=config.proxy.networks, proxy_timeout=config.proxy.timeout,
            tarpit_after=limits.tarpit_after, tarpit_delay=limits.tarpit_delay,
            min_data_rate=limits.min_data_rate, min_data_rate_grace=limits.min_data_rate_grace,
            data_budget=DataBudget(limits.max_data_in_memory) if limits.max_data_in_memory else None,
            spill_size=limits.data_spill_size,
            spill_dir=config.spool.dir)

    def proxy_allowed(self, peer: Peer) -> bool:
        return any(peer.ip in network for network in self.proxy_networks)


def peer_from(address: object) -> Peer:
    """A socket's peername as a `Peer`; IPv4-mapped IPv6 addresses as plain IPv4."""
    if isinstance(address, tuple) and len(address) >= 2:
        return Peer(ip=_client_ip(str(address[0])), port=int(address[1]))
    return NOWHERE


@functools.lru_cache(maxsize=4096)
def _client_ip(host: str) -> IPAddress:
    """Parsing an address costs ~10 µs per connection; a relay hears the same clients
    again and again (and the same balancer, behind PROXY), so answers are kept."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return _UNSPECIFIED
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_UNSPECIFIED = ipaddress.ip_address("0.0.0.0")
NOWHERE = Peer(ip=_UNSPECIFIED, port=0)    # no socket address (yet): before connection_made


async def open_front_door(config: Config) -> FrontDoor:
    """Load the certificate and the users file (in a worker thread).

    Raises ConfigError with one `FILE: key: problem` line per problem: a relay whose
    certificate or users cannot be read does not start half-armed.
    """
    problems: list[str] = []
    certificate = None
    if config.tls.cert_file is not None:
        try:
            certificate = ServerCertificate(config.tls, await asyncio.to_thread(server_context, config.tls))
            await _certificate_loaded(config, reload=False)
        except CertificateProblem as error:
            problems.append(f"{config.path}: {error.key}: {error}")
    authenticator = None
    if config.auth.users_file is not None:
        try:
            users = await asyncio.to_thread(_load_users, config.auth.users_file)
            authenticator = Authenticator(config.auth, users)
        except UsersFileError as error:
            problems.extend(f"{config.path}: auth.users_file: {p}" for p in error.problems)
    if problems:
        raise ConfigError(problems)
    if config.relay.open:
        observe.warning("open_relay", detail="relay.open = true: anyone may send mail anywhere "
                                             "through this relay")
    return FrontDoor.from_config(config, certificate, authenticator)


async def reload_front_door(door: FrontDoor, config: Config) -> None:
    """SIGHUP: read the certificate and the users file again. Sessions in flight keep
    what they have; what fails to load is logged and the previous one stays in use."""
    _warn_about_credential_copies(config)
    if door.certificate is not None:
        try:
            door.certificate.replace(await asyncio.to_thread(server_context, config.tls))
            await _certificate_loaded(config, reload=True)
        except CertificateProblem as error:
            observe.credentials_refused("tls_certificate", [str(error)], reload=True)
    if door.authenticator is not None and config.auth.users_file is not None:
        try:
            door.authenticator.replace_users(await asyncio.to_thread(_load_users, config.auth.users_file, True))
        except UsersFileError as error:
            observe.credentials_refused("users", error.problems, reload=True)


async def _certificate_loaded(config: Config, reload: bool) -> None:
    """The certificate now served, read once off the loop: its log line, and its expiry for
    each listener that serves TLS (frontfilter_tls_certificate_expiry_timestamp_seconds)."""
    assert config.tls.cert_file is not None
    summary, expiry = await asyncio.to_thread(read_certificate, config.tls.cert_file)
    observe.credentials_loaded("tls_certificate", reload, file=str(config.tls.cert_file), **summary)
    if expiry is not None:
        observe.tls_certificate_expires(
            [listener.name for listener in config.listeners if listener.tls is not TlsMode.NONE], expiry)


def _warn_about_credential_copies(config: Config) -> None:
    """Files under systemd's credentials directory are copies made when the service started: a
    reload reads the same copy, so a changed password or renewed key needs a restart. Said at
    each reload, where the administrator looks after one."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return
    for key, path in (("tls.cert_file", config.tls.cert_file), ("tls.key_file", config.tls.key_file),
                      ("auth.users_file", config.auth.users_file)):
        if path is not None and Path(path).is_relative_to(directory):
            observe.warning("credential_not_reloaded", key=key, file=str(path),
                            detail="a systemd credential is copied at start only: "
                                   "systemctl restart frontfilter to use a changed file")


def _load_users(path: Path, reload: bool = False) -> dict[str, ScryptHash]:
    users = load_users(path)
    observe.credentials_loaded("users", reload, file=str(path), users=len(users))
    try:
        if path.stat().st_mode & 0o004:
            observe.warning("users_file_readable", file=str(path),
                            detail="every local user can read the password hashes: chmod 600")
    except OSError:
        pass
    return users


def front_door_problems(config: Config) -> list[str]:
    """What `open_front_door` would refuse, without starting anything (`frontfilter check`).
    Secrets systemd has not handed over yet (config.credential_files_not_there_yet) are not
    read: check warns about them instead."""
    problems = []
    waiting = {key for key, _ in credential_files_not_there_yet(config)}
    if config.tls.cert_file is not None and not waiting & {"tls.cert_file", "tls.key_file"}:
        try:
            server_context(config.tls)
        except CertificateProblem as error:
            problems.append(f"{config.path}: {error.key}: {error}")
    if config.auth.users_file is not None and "auth.users_file" not in waiting:
        try:
            load_users(config.auth.users_file)
        except UsersFileError as error:
            problems.extend(f"{config.path}: auth.users_file: {p}" for p in error.problems)
    return problems
