"""aiosmtpd's per-connection introspection, answered per class: the same methods are found.

A name lost here would be a command aiosmtpd answers "502 not implemented" or a handler hook
it never calls, so the cached answers are compared with the real `dir` and `inspect`.
"""

from __future__ import annotations

import inspect

from frontfilter.smtp import introspect
from frontfilter.smtp.handler import Handler
from frontfilter.smtp.protocol import FrontSMTP


def test_cached_dir_finds_the_commands_and_hooks_dir_finds() -> None:
    cached = introspect._CachingDir()
    protocol = object.__new__(FrontSMTP)
    handler = Handler(pipeline=None)  # type: ignore[arg-type]
    handler.handle_NOOP = lambda *args: "250 OK"    # an instance's own hook counts too
    for obj in (protocol, handler, protocol, handler):    # twice: from the cache the second time
        for prefix in ("smtp_", "handle_"):
            assert sorted(n for n in cached(obj) if n.startswith(prefix)) == \
                sorted(n for n in dir(obj) if n.startswith(prefix))
    assert "smtp_DATA" in cached(protocol) and "handle_NOOP" in cached(handler)


def test_cached_inspect_lists_the_same_auth_methods_and_signatures() -> None:
    cached = introspect._CachingInspect()
    protocol = object.__new__(FrontSMTP)
    real = [(n, m) for n, m in inspect.getmembers(protocol) if n.startswith("auth_")]
    assert [(n, m) for n, m in cached.getmembers(protocol) if n.startswith("auth_")] == real
    handler = Handler(pipeline=None)  # type: ignore[arg-type]
    assert cached.signature(handler.handle_EHLO) == inspect.signature(handler.handle_EHLO)
    assert cached.signature(handler.handle_EHLO) == inspect.signature(handler.handle_EHLO)
