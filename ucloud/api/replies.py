"""The bodies of successful answers, as pydantic models of the stored objects: the OpenAPI
document describes each operation's answer with them, and the schemathesis test checks every
answer against it (tests/test_openapi_conformance.py)."""

from __future__ import annotations

from pydantic import BaseModel

from ucloud.models import VM, File, Host, Image, ImageStore, Specs, SSHKey


class Reply(BaseModel):
    pass


class Error(Reply):
    error: str  # what is wrong, for a person to read


class VMCreated(Reply):
    message: str
    uuid: str
    vm: VM


class VMQueued(Reply):
    message: str
    vm: VM


class VMList(Reply):
    vms: list[VM]


class HostDone(Reply):
    message: str
    host: Host


class HostUsed(BaseModel):
    """What a host's VMs use, as its agent measured it (models.HostUsage)."""

    cpu: float  # CPUs kept busy on average since the measurement before
    ram: float  # GiB their QEMUs hold
    disk: float  # GiB written (the disks' highest written offsets)
    vms: int  # running domains measured
    measured: float  # when (Unix time)


class ListedHost(Host):
    allocated: Specs  # the specs of the VMs placed on it and of those migrating to it, summed
    used: HostUsed | None  # None: not measured (its agent is not running)


class HostList(Reply):
    hosts: list[ListedHost]


class UserCredentials(Reply):
    name: str
    realm: str
    seed: str  # the TOTP secret (base32)
    otpauth: str  # the same as an otpauth:// URI, for authenticator apps


class FileList(Reply):
    files: list[File]


class ImageCreated(Reply):
    message: str
    uuid: str
    image: Image


class ImageQueued(Reply):
    message: str
    image: Image


class ImageList(Reply):
    images: list[Image]


class StoreCreated(Reply):
    message: str
    image_store: ImageStore


class StoreList(Reply):
    image_stores: list[ImageStore]


class KeyDone(Reply):
    message: str
    key: SSHKey


class KeyList(Reply):
    keys: list[SSHKey]
