"""`python -m harness.cli ...` = `fedharness ...`."""

from harness.cli.main import main

raise SystemExit(main())
