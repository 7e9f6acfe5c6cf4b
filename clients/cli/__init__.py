"""The `duft` command line."""
