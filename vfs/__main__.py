"""`python -m vfs` is the `vfs` command."""

import sys

from vfs.cli import main

sys.exit(main())
