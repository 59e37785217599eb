"""Command-line interface: one subcommand per module, thin layers over the library."""
