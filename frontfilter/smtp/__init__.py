"""The SMTP edge: an I/O-free session core (`core`), its asyncio shell (`session`), the hook glue
to the pipeline (`handler`), listeners, TLS, AUTH, PROXY and limits. Policy lives in the pipeline."""
