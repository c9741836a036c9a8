"""`python -m phibox.device.cli ...` runs the `phibox` command (used where the script is not on PATH)."""

from phibox.device.cli.main import main

raise SystemExit(main())
