"""What a container holds: the members an archive, a compressed file or a document carries.

Every reader of containers (`archives` for archives and compressed files, `embedded` for
objects inside documents) answers with a `Listing`, and `inspect` turns each member into a
`Part` that is typed, named and opened in turn. A reader never raises for a broken input:
what it could not read is a `problem` on the member, or on the listing as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontfilter.content.facts import Uninspectable


@dataclass(frozen=True)
class Member:
    name: str                 # as stored in the container, decoded; "" when it has none
    data: bytes | None        # None when nothing could be read (encrypted, unsupported, broken)
    encrypted: bool = False
    truncated: bool = False   # reading stopped at a bound; `data` is the prefix read
    problem: Uninspectable | None = None   # why `data` is None, partial or not to be trusted


@dataclass(frozen=True)
class Listing:
    members: tuple[Member, ...] = ()
    # About the container as a whole: it could not be opened, its listing broke off, its
    # format is one we cannot read. Empty when every member was listed.
    problems: frozenset[Uninspectable] = frozenset()
    # Two readers of one container listed different members (a zip's central directory against
    # its local headers, two zips concatenated): each member of either is in `members`.
    disagreement: bool = False
