"""Attribution methods as registry entries, one family per module; see docs/architecture.md."""
