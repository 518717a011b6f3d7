"""Getting mail to the backend safely: backend sessions, and (queue mode) the spool and worker."""
