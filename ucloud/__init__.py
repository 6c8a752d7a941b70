"""ucloud: an opinionated cloud management framework for virtual-machine hosting."""

__version__ = "0.1.0"
