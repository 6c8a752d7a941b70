"""``ucloud-filescanner``: registers the files users upload into their directories.

Layout: ``<upload_root>/<user>/<name>``. The directory's name is the user's name; every user
directory in one upload root belongs to one realm, the ``upload_realm`` setting ("users" by
default): an upload root serves one realm, and a cluster with users in several realms runs a
scanner (on its own root) for each. The name of a file is its path relative to the user's
directory.
"""
