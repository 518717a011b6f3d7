import sys

from frontfilter.cli import main

sys.exit(main())
