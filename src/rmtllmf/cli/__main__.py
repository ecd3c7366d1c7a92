"""``python -m rmtllmf.cli``."""

from rmtllmf.cli import main

raise SystemExit(main())
