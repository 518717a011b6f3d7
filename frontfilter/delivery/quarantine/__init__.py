"""The quarantine: messages a rule set aside (`action = "quarantine"`), kept for an administrator,
on the spool's durable-write helper (delivery/safeio.py).

One noun, small modules, one job each:
- `store`: the file format (`QDIR/ID.held`) and the blocking file operations; reads the
  previous format (`QDIR/ID.eml`) as "legacy".
- `ledger`: small records the `frontfilter quarantine` tool leaves for the running relay
  (releases, expiries it made), so that they reach the relay's log and /metrics.
- `retention`: one pass of the retention (`quarantine.max_age`, `quarantine.max_size`).
- `expiry`: the relay's periodic task (retention, the ledger, the gauges), in one worker.

The pipeline writes (`Pipeline._quarantine` → `store.write`); the administrator's command
(`frontfilter quarantine`) is tools/quarantinectl.py, and a release (back on its way through
the spool, or the backend in sync mode; `--rescan` through the pipeline) is tools/release.py:
both sit above the pipeline, this room below it. The files are the only truth: the tool
works the same with the relay stopped or running with several workers, by the per-file flock
(delivery/safeio.py) that the relay's retention takes too.
"""
