"""The HTTP endpoint a monitoring system scrapes: /metrics (`httpd`), /healthz and /readyz
(`health`: the readiness checks and the probes that keep them fresh). The metrics themselves are
defined in frontfilter/metrics.py and moved through frontfilter/observe.py."""
