"""Request bodies, as pydantic models: they validate every request and make the OpenAPI document.

Field names keep the original ucloud API's (``seed`` for ``token``, ``vm_name``, ``os-ssd``,
sizes such as ``"10 GB"``), so existing users' scripts keep working.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from ucloud.models import NAME_PATTERN, Action, check_name

# A number, then no unit (GiB), "B" (bytes), or K/M/G/T with an optional "B" or "iB". One
# pattern for parsing and for the OpenAPI document (ECMA and Python read it alike).
SIZE_PATTERN = r"^ *([0-9]+(\.[0-9]+)?) *([bB]|[kKmMgGtT]([iI]?[bB])?)? *$"
_SIZE = re.compile(SIZE_PATTERN)
_UNIT_GIB = {"b": 1 / (1 << 30), "k": 1 / (1 << 20), "m": 1 / 1024, "g": 1.0, "t": 1024.0}


def parse_size(value: object) -> float:
    """A size in GiB, from a number (GiB) or a string such as ``"10 GB"`` or ``"512MiB"``."""
    if isinstance(value, bool):
        raise ValueError("must be a size in GiB, not a boolean")
    if isinstance(value, int | float):
        gib = float(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if not match:
            raise ValueError(f"{value!r} is not a size (examples: 10, '10 GB', '512 MiB')")
        unit = (match.group(3) or "g")[0].lower()
        gib = float(match.group(1)) * _UNIT_GIB[unit]
    else:
        raise ValueError("must be a size in GiB (a number) or a string such as '10 GB'")
    if gib < 0:
        raise ValueError("must not be negative")
    return gib


class _NumberOrSizeString:
    """The JSON schema of a Size: the number (with the field's limits), or a string with a
    unit; the limits apply to a string's value in GiB too."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        size_string = {
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "a size with a unit ('10 GB', '512 MiB'); none: GiB",
        }
        return {"anyOf": [handler(schema), size_string]}


Size = Annotated[float, BeforeValidator(parse_size), _NumberOrSizeString()]
Name = Annotated[
    str,
    BeforeValidator(lambda v: check_name(v) if isinstance(v, str) else v),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 64}),
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Credentials(Body):
    """Every request names its user and carries a current TOTP token."""

    name: str = Field(description="the user's name")
    realm: str = Field(description="the user's realm")
    token: str = Field(
        validation_alias=AliasChoices("token", "seed"),
        description="the current TOTP one-time password (RFC 6238); 'seed' is accepted too",
    )


class VMSpecs(Body):
    cpu: StrictInt = Field(ge=1, le=256, description="virtual CPUs")
    ram: Size = Field(gt=0, le=4096, description="memory in GiB")
    ssd: Size = Field(
        10,
        gt=0,
        le=65536,
        validation_alias=AliasChoices("ssd", "os-ssd"),
        description="system disk in GiB ('os-ssd' accepted too)",
    )
    hdd: Size = Field(0, ge=0, le=65536, description="extra disk space in GiB")


class VMCreate(Credentials):
    vm_name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="a name for the VM; default: a generated one, unique among yours",
    )
    specs: VMSpecs
    image: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="an image's uuid or name; default: the cluster's default image",
    )
    networks: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("networks", "network"),
        description="networks to attach (uuids or names), one NIC on each",
    )
    ssh_keys: list[Name] | None = Field(
        None,
        max_length=100,
        description="names of the caller's SSH keys to put in the VM; default: all of them",
    )
    user_data: str | None = Field(
        None,
        description="run at first boot: a #cloud-config or a #! script (UTF-8 text, at most "
        "the API's user_data_max bytes)",
    )
    hostname: str | None = Field(
        None, description="the guest's hostname (one DNS label); default: the VM's name"
    )


class VMRef(Credentials):
    vmid: str = Field(
        min_length=1,
        max_length=64,
        validation_alias=AliasChoices("vmid", "id", "uuid"),
        description="the VM's uuid ('id' accepted too)",
    )


class VMAction(VMRef):
    action: Action


class Listing(Credentials):
    pass


class HostSpecs(Body):
    # The limits of a stored Specs (ucloud.models), so what passes here can be stored.
    cpu: StrictInt = Field(ge=1, le=4096)
    ram: Size = Field(gt=0, le=1 << 20)
    hdd: Size = Field(0, ge=0, le=1 << 30)
    ssd: Size = Field(0, ge=0, le=1 << 30)


class HostCreate(Credentials):
    hostname: Name = Field(description="the host's name, as its agent is configured")
    specs: HostSpecs


class HostRef(Credentials):
    hostname: Name = Field(description="the host's name")


class HostMaintenance(Credentials):
    hostname: Name
    maintenance: StrictBool = Field(
        description="true: place no new VMs on the host, and live-migrate its running and "
        "suspended VMs away (its drain); false: take new VMs again (nothing is moved back)"
    )


class UserCreate(Credentials):
    user: Name = Field(description="the new user's name")
    user_realm: Name = Field(description="the new user's realm")


class ImageCreate(Credentials):
    image_name: Name = Field(description="a name for the image")
    file_uuid: str = Field(min_length=1, max_length=64, description="the uploaded file's uuid")
    image_store: Name | None = Field(
        None, description="the image store to keep it in; default: the cluster's default store"
    )
    public: StrictBool = Field(False, description="usable by every user (administrators only)")


class ImageRef(Credentials):
    uuid: str = Field(
        min_length=1,
        max_length=64,
        validation_alias=AliasChoices("uuid", "id", "image"),
        description="the image's uuid, or the name of one's own image ('id' accepted too)",
    )


class StoreCreate(Credentials):
    image_store: Name = Field(description="the new store's name")
    pool: Name = Field(description="the Ceph pool that holds its images")


class NetworkCreate(Credentials):
    network_name: Name = Field(description="a name for the network")
    ipv4: str | None = Field(
        None, description="an IPv4 subnet for it, e.g. '10.0.0.0/24' (default: IPv6 only)"
    )
    mtu: int | None = Field(None, ge=1280, le=9000, description="default: the cluster's")
    shared: StrictBool = Field(False, description="every user may attach it (administrators only)")
    router: Name | None = Field(
        None,
        description="the host that routes it (administrators only; it must offer to route "
        "and be UP); default: the scheduler chooses one",
    )


class NetworkRef(Credentials):
    network: str = Field(
        min_length=1,
        max_length=64,
        validation_alias=AliasChoices("network", "uuid", "id"),
        description="the network's uuid, or the name of one's own (or a shared) network",
    )


class NetworkRouter(NetworkRef):
    router: Name = Field(
        description="the host to route it from now on (it must offer to route and be UP)"
    )


class VMNetwork(VMRef):
    network: str = Field(min_length=1, max_length=64, description="the network's uuid or name")


class KeyAdd(Credentials):
    key_name: Name = Field(description="a name for the key")
    public_key: str = Field(
        max_length=16384,
        validation_alias=AliasChoices("public_key", "key"),
        description="one OpenSSH public key line (the content of id_ed25519.pub, ...)",
    )


class KeyRef(Credentials):
    key_name: str = Field(min_length=1, max_length=64, description="the key's name")
