"""`python -m sleepjax <command> ...`: the `sleepjax` command line."""

from sleepjax.cli import main

main()
