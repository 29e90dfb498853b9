import sys

# The console script's entry: one line, not a traceback, when the pipeline extra is missing.
from compressor.entry import main

sys.exit(main())
