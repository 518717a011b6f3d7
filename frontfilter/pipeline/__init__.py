"""The decision pipeline: what the relay decides at each SMTP stage, and why.

- `stages`: one method per stage (connect, HELO, MAIL, RCPT, DATA), each returning the reply;
  the order of checks at each stage, and the edges to the backend and the spool.
- `decision`: end of DATA, in an inspection thread: the content walk, the rules, the rewrite.
- `endofdata`: queue mode's end of DATA: the decision, then the spool write, under a deadline.
- `disposition`: what a verdict means: the relay's closed set of outcomes, each one's reply,
  log verdict and whether the message is forwarded.
- `dryrun`: the same pipeline with nothing sent or stored (`frontfilter scan`, `test`).
"""
