"""``python -m rmtllmf``: the command line."""

from rmtllmf.cli import main

raise SystemExit(main())
