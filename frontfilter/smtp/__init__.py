"""The aiosmtpd edge: protocol hardening, hook glue, listeners. Policy lives in the pipeline."""
