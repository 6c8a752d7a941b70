"""``ucloud``: the command-line client of the ucloud API."""
