"""`python -m frontfilter`: the same as the `frontfilter` command (cli.py)."""

import sys

from frontfilter.cli import main

sys.exit(main())
