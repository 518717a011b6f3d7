"""frontfilter: a hardened SMTP edge relay that filters mail before it reaches the backend."""

__version__ = "0.1.0"
