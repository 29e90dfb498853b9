"""`python -m deploy ...`: the same as the `deploy` console script."""

from __future__ import annotations

import sys

from deploy.cli import main

if __name__ == "__main__":
    sys.exit(main())
