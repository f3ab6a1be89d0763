"""`python -m bookaudit` runs the CLI, so tests can spawn it with the current interpreter."""

from bookaudit.cli import main

main()
