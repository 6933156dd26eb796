import sys

from bmsync.cli import main

sys.exit(main())
