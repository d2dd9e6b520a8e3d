"""`python -m tools.sim ...`: the simulated board's runner (tools/sim/run.py)."""
import sys

from tools.sim.run import main

sys.exit(main())
