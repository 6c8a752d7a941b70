"""What the API accepts as a size and as a name, and the message a refused one gets
(ucloud/api/schemas.py, ucloud/models.check_name; errors.describe makes the API's answer)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from ucloud.api.errors import describe
from ucloud.api.schemas import VMSpecs, parse_size
from ucloud.models import User, check_name

NAME_RULE = "must be 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"


@pytest.mark.parametrize(
    ("given", "gib"),
    [
        (10, 10.0),  # a number is GiB, as in the original API
        (0.5, 0.5),
        ("10", 10.0),
        ("10 GB", 10.0),
        ("10GiB", 10.0),
        ("10 gb", 10.0),
        ("10g", 10.0),
        ("  2.5 G  ", 2.5),
        ("512 MiB", 0.5),
        ("512M", 0.5),
        ("1 TB", 1024.0),
        ("1048576 KiB", 1.0),
    ],
)
def test_sizes_accepted(given: object, gib: float):
    assert parse_size(given) == pytest.approx(gib)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (True, "must be a size in GiB, not a boolean"),
        (-1, "must not be negative"),
        ("-1 GB", "'-1 GB' is not a size (examples: 10, '10 GB', '512 MiB')"),
        ("ten", "'ten' is not a size (examples: 10, '10 GB', '512 MiB')"),
        ("10 PB", "'10 PB' is not a size (examples: 10, '10 GB', '512 MiB')"),
        ("", "'' is not a size (examples: 10, '10 GB', '512 MiB')"),
        (None, "must be a size in GiB (a number) or a string such as '10 GB'"),
        ([10], "must be a size in GiB (a number) or a string such as '10 GB'"),
    ],
)
def test_sizes_refused_with_a_message(given: object, message: str):
    with pytest.raises(ValueError) as refused:
        parse_size(given)
    assert str(refused.value) == message


def test_a_size_in_bytes_is_not_taken_for_gib():
    # It once parsed as 4096 GiB, which VMSpecs.ram (at most 4096) accepted.
    assert parse_size("4096 B") == 4096 / (1 << 30)
    assert parse_size("4294967296B") == 4.0
    with pytest.raises(ValueError):
        parse_size("4096 iB")


def test_vm_specs_take_the_original_field_names_and_sizes():
    specs = VMSpecs.model_validate({"cpu": 2, "ram": "512 MiB", "os-ssd": "20 GB"})
    assert (specs.cpu, specs.ram, specs.ssd, specs.hdd) == (2, 0.5, 20.0, 0.0)
    assert VMSpecs.model_validate({"cpu": 1, "ram": 1}).ssd == 10  # the default system disk


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"cpu": 1, "ram": "lots"}, "ram: Value error, 'lots' is not a size"),
        ({"cpu": 1, "ram": 0}, "ram: Input should be greater than 0"),
        ({"cpu": 1, "ram": "5 TB"}, "ram: Input should be less than or equal to 4096"),
        ({"cpu": "2", "ram": 1}, "cpu: Input should be a valid integer"),
        ({"cpu": 0, "ram": 1}, "cpu: Input should be greater than or equal to 1"),
        ({"cpu": 1, "ram": 1, "memory": 2}, "memory: Extra inputs are not permitted"),
        ({"ram": 1}, "cpu: Field required"),
    ],
)
def test_vm_specs_refused_with_what_is_wrong(body: dict[str, object], message: str):
    with pytest.raises(ValidationError) as refused:
        VMSpecs.model_validate(body)
    assert describe(refused.value).startswith(message)


@pytest.mark.parametrize("name", ["a", "web-1", "db_2.prod", "A.b-C_d", "x" * 64, "a..b", "-"])
def test_names_accepted(name: str):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, ".hidden", "..", "a/b", "a b", "naïve", "tab\t", "semi;colon"]
)
def test_names_refused_with_the_rule(name: str):
    with pytest.raises(ValueError, match=f"^{re.escape(NAME_RULE)}$"):
        check_name(name)


def test_a_user_name_that_would_escape_its_key_is_refused():
    with pytest.raises(ValidationError) as refused:
        User(name="../admin", realm="users", totp_secret="x")
    assert describe(refused.value) == f"name: Value error, {NAME_RULE}"
