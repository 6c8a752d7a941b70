"""Consoles: ``ucloud-console`` (the WebSocket proxy users reach) and ``ucloud-console-relay``
(one per host, the only way to a VM's display and serial port). See ``ucloud.consoles``."""
