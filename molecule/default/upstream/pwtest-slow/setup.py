"""Building the wheel takes SLOW_SECONDS: long enough for the fleet test to kill
the agent while it holds the job (molecule/default/verify.yml)."""

import sys
import time

from setuptools import setup

SLOW_SECONDS = 40

if "bdist_wheel" in sys.argv:
    time.sleep(SLOW_SECONDS)
setup()
