"""The systemd unit (systemd/evse-agent.service), checked by systemd itself and against issue 5.

`systemd-analyze verify` also checks that ExecStart's program exists. The unit verified here is the one
`evse install-service` writes, pointed (--venv) at the environment running these tests, whose bin/evse
is the real entry point: every other line is the packaged unit's, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.install import TEMPLATE_CONFIG, TEMPLATE_EXECUTABLE, UNIT_NAME, render_unit

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / UNIT_NAME


def systemd_analyze() -> str:
    """systemd-analyze (Debian package systemd, which .ci/run installs); skips without it, fails on CI."""
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; .ci/run installs it)")
    return found


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}} of a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.ci_required
def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = systemd_analyze()
    result = subprocess.run(
        [sys.executable, "-m", "agent", "install-service", "--prefix", str(tmp_path), "--venv", sys.prefix],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "etc" / "systemd" / "system" / UNIT_NAME
    assert installed.read_text() == render_unit(Path(sys.prefix), Path(TEMPLATE_CONFIG))
    exec_start = directives(installed.read_text())["Service"]["ExecStart"][0]
    assert exec_start.split()[0] == f"{sys.prefix}/bin/evse" and os.access(exec_start.split()[0], os.X_OK)

    verify = subprocess.run([analyze, "verify", "--man=no", str(installed)], capture_output=True, text=True,
                            timeout=60)
    # verify exits 0 on unknown keys and bad values too, and only says so: any output is a finding
    assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), \
        verify.stdout + verify.stderr


def test_the_packaged_unit_differs_from_the_installed_one_only_in_exec_start():
    packaged = UNIT.read_text()
    rendered = render_unit(Path("/srv/venv"), Path("/srv/etc/config.toml"))
    changed = [(a, b) for a, b in zip(packaged.splitlines(), rendered.splitlines(), strict=True) if a != b]
    assert changed == [(f"ExecStart={TEMPLATE_EXECUTABLE} run --config {TEMPLATE_CONFIG}",
                        "ExecStart=/srv/venv/bin/evse run --config /srv/etc/config.toml")]


def test_the_unit_has_the_directives_issue_5_asks_for():
    unit = directives(UNIT.read_text())
    service = unit["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key}: {service.get(key)}"
        return service[key][0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "all"  # the watchdog pings come from the control process, a child
    assert one("WatchdogSec") == "10s"
    assert one("Restart") == "on-failure"
    assert one("TimeoutStopSec") and one("TimeoutStartSec")
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    # its own user and groups; the device groups, and `evse` so it can give the control socket to it
    assert one("User") == "evse-agent" and one("Group") == "evse-agent"
    assert set(one("SupplementaryGroups").split()) == {"gpio", "spi", "i2c", "dialout", "input", "evse"}
    assert one("StateDirectory") == "evse-agent"
    assert one("RuntimeDirectory") == "evse-agent"
    assert one("ConfigurationDirectory") == "evse-agent"
    # group evse must be able to reach /run/evse-agent/control.sock: traverse, but not list
    assert int(one("RuntimeDirectoryMode"), 8) & 0o001 and not int(one("RuntimeDirectoryMode"), 8) & 0o004
    assert one("UMask") == "0027"
    # issue 9 C8: 1,024 descriptors were exhausted by idle control-socket connections (now at most 32)
    assert int(one("LimitNOFILE")) >= 4096
    # hardening that keeps GPIO, SPI, I2C, serial, HID input and CAN reachable
    assert one("ProtectSystem") == "strict" and one("ProtectHome") == "yes"
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_CAN", "AF_NETLINK"}
    assert "PrivateDevices" not in service, "PrivateDevices= hides /dev/gpiochip*, /dev/spidev*, /dev/tty*"
    assert one("DevicePolicy") == "closed"
    allowed = dict(entry.split() for entry in service["DeviceAllow"])
    for device_class in ("char-gpiochip", "char-spi", "char-i2c", "char-ttyS", "char-ttyAMA", "char-ttyUSB",
                         "char-ttyACM"):
        assert allowed.get(device_class) == "rw", device_class
    assert allowed.get("char-input") == "r"
    assert "ProtectKernelTunables" not in service, "a sysfs PWM pilot writes to /sys/class/pwm"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert set(unit["Unit"]["After"][0].split()) == {"network-online.target", "systemd-modules-load.service"}
