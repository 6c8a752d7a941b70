"""``ucloud-scheduler``: places VMs on hosts and moves the VMs of dead hosts."""
