"""The CLI's command handlers, one module a group; cli.py picks one per command."""
