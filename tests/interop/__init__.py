"""Interop test support: the third-party CSMS implementations (installed by setup.sh into .interop/), their
drivers, and a logging proxy. The tests themselves are tests/test_interop_*.py."""
