"""The shipped systemd units, as `pierce systemd-unit` prints them."""

from __future__ import annotations

import pytest

from pierce import systemd


@pytest.mark.parametrize("role", systemd.ROLES)
def test_the_unit_starts_the_given_pierce(role: str) -> None:
    text = systemd.unit(role, "/opt/pierce/bin/pierce")
    assert systemd.SHIPPED_PATH not in text
    assert f"ExecStart=/opt/pierce/bin/pierce {role} -c ${{CREDENTIALS_DIRECTORY}}/{role}.toml" in text


def test_a_pierce_under_a_home_directory_is_hidden_from_the_service() -> None:
    assert systemd.hidden_by_protect_home("/home/ann/.local/bin/pierce")
    assert systemd.hidden_by_protect_home("/root/.local/bin/pierce")
    assert not systemd.hidden_by_protect_home("/opt/pierce/bin/pierce")
    assert not systemd.hidden_by_protect_home("/usr/bin/python3 -m pierce")
