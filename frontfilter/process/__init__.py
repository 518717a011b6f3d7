"""The running relay as a process: `service` (one relay: start, reload, stop), `supervisor`
(workers, one per core, on shared listening sockets) and `sdnotify` (what systemd is told)."""
