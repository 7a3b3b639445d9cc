import sys

from spinert.cli import main

sys.exit(main())
