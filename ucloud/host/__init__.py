"""``ucloud-host``: the agent on each hypervisor, reconciling its VMs towards desired state."""
