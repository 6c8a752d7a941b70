"""Tenant networks (core, shared by the API and the host agents): allocation of VXLAN ids,
prefixes, MACs and addresses, and the transactions that claim them."""
