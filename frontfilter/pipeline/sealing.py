"""[arc]: the relay's ARC sealing key in force, and which forwarded messages it seals.

The key is a credential like the TLS key, and handled the same way (delivery/tls.py,
smtp/door.py): read and checked at start (`load_sealer`: a key that does not load stops the
start, naming file and key), read again on SIGHUP (`reload_sealer`: one that fails is logged
with `arc_key_refused` and the previous key stays in use), checked without starting anything by
`frontfilter check` (`sealing_key_problems`). Files are read in worker threads, never on the
event loop.

`Sealer.seal` runs in the inspection thread, from `pipeline.decision.decide`, on the message
exactly as it will be forwarded; the signing itself is content/arcseal.py's. Which messages:
`[arc] seal = "changed"` (default) those the relay changed where a DKIM signature may cover it
(decision.py says which changes count), `"always"` every forwarded one. A message that cannot
be sealed, or whose turn comes too late, is forwarded unsealed: the caller logs and counts why.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from frontfilter import observe
from frontfilter.config import ArcConfig, ArcSeal, Config, ConfigError, credential_files_not_there_yet
from frontfilter.content.arcseal import RECOMMENDED_KEY_BITS, KeyProblem, Seal, SealingKey, read_key, seal
from frontfilter.mapped import MessageBytes

# The most a key file may hold: a 4096-bit RSA key in PEM is about 3.3 KB. A bigger file is
# not a key, and is not read whole.
MAX_KEY_FILE_BYTES = 64 * 1024


class Sealer:
    """[arc] and the key in force. A reload replaces the key whole (one attribute: a thread
    sealing meanwhile keeps the key it read)."""

    def __init__(self, config: ArcConfig, key: SealingKey):
        self.always = config.seal is ArcSeal.ALWAYS
        self.key = key

    def seal(self, head: bytes, message: MessageBytes, authserv_id: str, changed: bool,
             deadline: float | None = None) -> Seal | None:
        """The seal of `head` + `message`, as they are forwarded; None when this message is not
        to be sealed (unchanged, with seal = "changed"). Past `deadline` (a `time.monotonic()`
        value) it is not sealed, so the message is not held for it."""
        if not (changed or self.always):
            return None
        if deadline is not None and time.monotonic() > deadline:
            return Seal(problem="no time left within inspection.timeout")
        return seal(head + message, self.key, authserv_id)     # one copy, for what is sealed only


def read_sealing_key(config: Config) -> SealingKey:
    """[arc]'s key, read and checked; raises ValueError as `FILE: arc.key_file: PATH: problem`.
    Reads a file: call it off the event loop."""
    arc = config.arc
    assert arc.key_file is not None
    where = f"{config.path}: arc.key_file: {arc.key_file}"
    try:
        with open(arc.key_file, "rb") as handle:
            pem = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise ValueError(f"{where}: cannot read: {error.strerror or error}") from None
    if len(pem) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{where}: larger than {MAX_KEY_FILE_BYTES // 1024} KiB: not a key")
    try:
        return read_key(pem, arc.selector, arc.domain)
    except KeyProblem as error:
        raise ValueError(f"{where}: {error}") from None


async def load_sealer(config: Config) -> Sealer | None:
    """At start: the sealer, None without `arc.key_file`. Raises ConfigError naming file and
    key: a relay told to seal does not start without its key."""
    if config.arc.key_file is None:
        return None
    try:
        key = await asyncio.to_thread(read_sealing_key, config)
    except ValueError as error:
        raise ConfigError([str(error)]) from None
    _loaded(config, key, reload=False)
    return Sealer(config.arc, key)


async def reload_sealer(sealer: Sealer | None, config: Config) -> None:
    """SIGHUP: read the key again (a new key under a new selector means a new config, so a
    restart). What fails to load is logged and the previous key stays in use."""
    if sealer is None:
        return
    directory = os.environ.get("CREDENTIALS_DIRECTORY")    # as smtp/door.py says of its files
    if directory and config.arc.key_file is not None and config.arc.key_file.is_relative_to(directory):
        observe.warning("credential_not_reloaded", key="arc.key_file", file=str(config.arc.key_file),
                        detail="a systemd credential is copied at start only: "
                               "systemctl restart frontfilter to use a changed file")
    try:
        key = await asyncio.to_thread(read_sealing_key, config)
    except ValueError as error:
        observe.credentials_refused("arc_key", [str(error)], reload=True)
        return
    sealer.key = key
    _loaded(config, key, reload=True)


def _loaded(config: Config, key: SealingKey, reload: bool) -> None:
    observe.credentials_loaded("arc_key", reload, file=str(config.arc.key_file), selector=key.selector,
                               domain=key.domain, bits=key.bits)
    weak = weak_key(key)
    if weak is not None:
        observe.warning("config_warning", key="arc.key_file", detail=weak)


def weak_key(key: SealingKey) -> str | None:
    """Why a key that loads is still too short, or None."""
    if key.bits >= RECOMMENDED_KEY_BITS:
        return None
    return (f"a {key.bits}-bit key: {RECOMMENDED_KEY_BITS} bits recommended (RFC 8301 §3.2); "
            f"some receivers refuse shorter ones")


def sealing_key_problems(config: Config) -> tuple[list[str], SealingKey | None]:
    """For `frontfilter check`: what `load_sealer` would refuse, and the key when it loads
    (its DNS record is printed). A key systemd has not handed over yet is not read: check
    warns about it instead (config.credential_files_not_there_yet)."""
    path: Path | None = config.arc.key_file
    if path is None or "arc.key_file" in {key for key, _ in credential_files_not_there_yet(config)}:
        return [], None
    try:
        return [], read_sealing_key(config)
    except ValueError as error:
        return [str(error)], None


def dns_record(key: SealingKey) -> str:
    """The record to publish, as a zone file line: the text split into strings of at most 255
    characters (RFC 1035 §3.3.14: one TXT string is at most 255 octets; receivers join them,
    RFC 6376 §3.6.2.2). A 2048-bit key's record needs two."""
    text = key.record
    strings = " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))
    return f"{key.record_name}. IN TXT {strings}"
