"""`python -m devstack` runs the dev stack's command line from a checkout."""

from devstack.cli import stack

stack(prog_name="python -m devstack")
