"""The ``tdaf`` command line."""
