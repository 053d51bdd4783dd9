"""`python -m coordinator.cli ARGS` runs the `gradmesh` command."""
import sys

from coordinator.cli import main

sys.exit(main())
