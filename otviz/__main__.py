"""``python -m otviz``: the same as the ``otviz`` command."""

import sys

from otviz.cli import main

if __name__ == "__main__":
    sys.exit(main())
