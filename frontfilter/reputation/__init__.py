"""Who the client and the sender are, as far as DNS and history tell: DNSBL/DNSWL, SPF, greylisting.

Modules:
    facts     the values the rules read (pure; the rules engine imports it)
    resolver  async DNS with configured resolvers, a TTL cache and deadlines (dnspython)
    dnsbl     weighted block/allow lists of the client address, reply-code filtering
    spf       SPF of the envelope sender (pyspf in worker threads, on our resolver)
    greylist  the (client net, sender, recipient) triplets, in SQLite (WAL, multi-process)
    checks    what the pipeline calls: which facts a stage needs, gathered once, in time

This package is the only one that talks DNS. Each check reports facts; the administrator's rules
decide (no policy is coded here). Importing `frontfilter.reputation` itself loads nothing: the rules
engine imports `frontfilter.reputation.facts`, which must stay free of asyncio.
"""
