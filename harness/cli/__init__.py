"""The `harness` command line (typer): commands map flags onto the typed configs and call the parts below.
"""
