"""The example configuration lists every setting, and settings load from an env file."""

from __future__ import annotations

from pathlib import Path

from ucloud.config import GROUPS, Settings, example_env, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "ucloud.env.example"


def test_example_lists_every_setting_by_group():
    text = EXAMPLE.read_text()
    missing = [n for n in Settings.model_fields if f"UCLOUD_{n.upper()}=" not in text]
    assert missing == [], f"conf/ucloud.env.example lacks {missing}"
    assert text == example_env(), "regenerate it: python -m ucloud.config > conf/ucloud.env.example"
    grouped = [n for g in GROUPS for n in g.__annotations__ if n in Settings.model_fields]
    assert sorted(grouped) == sorted(Settings.model_fields)  # each setting in one group


def test_env_file_and_environment(tmp_path, monkeypatch):
    env = tmp_path / "ucloud.env"
    env.write_text("UCLOUD_API_BIND=0.0.0.0:8080\nUCLOUD_CPU_ALLOCATION_RATIO=2\n")
    monkeypatch.setenv("UCLOUD_ENV_FILE", str(env))
    monkeypatch.setenv("UCLOUD_CPU_ALLOCATION_RATIO", "3")
    s = load_settings()
    assert s.api_bind == "0.0.0.0:8080"
    assert s.cpu_allocation_ratio == 3.0  # the environment wins over the file
    assert s.etcd_members() == [("127.0.0.1", 2379)]
