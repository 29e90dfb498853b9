"""The `compressor` console script: `compressor.cli.main`, and one line instead of a traceback
when the pipeline's packages are missing.

`deploy` installs without torch (`pip install 'layer-lottery-deploy[deploy]'`), and both
console scripts come with every install, so on a deploy-only machine `compressor run` must say
which extra to install. Commands that need no torch (`--help`, `lint`, `bench`) still work
there. The exit code is 1, as for every other error the project reports (`compressor.cli`).
"""

from __future__ import annotations

import sys

from compressor.cli import EXIT_ERROR
from compressor.cli import main as cli_main
from deploy.lazy import pipeline_missing


def main(argv: list[str] | None = None) -> int:
    try:
        return cli_main(argv)
    except ModuleNotFoundError as exc:
        reason = pipeline_missing(exc)
        if reason is None:  # not a pipeline package: a bug or a broken install, shown as is
            raise
        print(f"compressor: error: {reason}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
