"""Run the CLI with ``python -m canvoy``."""

from canvoy.cli import main

raise SystemExit(main())
