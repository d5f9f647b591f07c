"""`python -m modalfuse.cli`: the same entry point as the `modalfuse` command."""

from modalfuse.cli import main

main()
