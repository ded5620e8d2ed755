"""The ``logtriage`` command: one entry point that registers every part's subcommands."""
