"""A build that waits for the test to let it finish.

Each version waits until the file ``/tmp/pwtest-gates/pwtest-gated-<version>``
exists (the test creates it), so a test can act while the build is surely
running (kill the agent, restart the database, stop the master), then let it
finish. It gives up after 15 minutes.
"""

import re
import sys
import time
from pathlib import Path

from setuptools import setup

VERSION = re.search(r'(?m)^version = "(.*)"$', Path("pyproject.toml").read_text()).group(1)
GATE = Path("/tmp/pwtest-gates") / f"pwtest-gated-{VERSION}"

print(f"PWTEST-GATED {VERSION}: waiting for {GATE}", flush=True)
deadline = time.monotonic() + 900
while not GATE.exists():
    if time.monotonic() > deadline:
        sys.exit(f"{GATE} never appeared")
    time.sleep(0.2)
setup()
