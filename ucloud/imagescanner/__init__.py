"""``ucloud-imagescanner``: turns uploaded files into images in storage (see daemon.py)."""
