"""systemd integration of a Type=notify unit (systemd/evse-agent.service): READY, WATCHDOG, STATUS.

The messages go to $NOTIFY_SOCKET through the `sdnotify` library (one datagram each); without
$NOTIFY_SOCKET (not started by systemd) nothing is sent and nothing is computed.

* READY=1 once, after the control process started the board and reported its first control step: every
  contactor was commanded open before that step, and the step read its mirror contact where one is fitted.
  A contactor that reads closed then (welded) is a latched fault the station reports (STATUS, OCPP
  StatusNotification Faulted), not a reason to withhold READY: a start timeout would make systemd
  restart the agent over and over, and the CSMS would see an offline station instead of the fault.
* WATCHDOG=1 only from the control loop, at most every WatchdogSec/3: in the control process
  (agent.control.process, which needs NotifyAccess=all) while the agent answers it, or here after each
  step of an in-process control loop. No other task pings: a control step that hangs (a stuck device
  read), a control loop that died or a stalled agent stops the pings, and systemd aborts and restarts the
  unit after WatchdogSec.
* STATUS=<one line> for `systemctl status`, when it changes and at most once a second, e.g.
  "OCPP connected/Accepted; 1: Charging 11.0 kW; 2: Available; journal 0 pending".
* RELOADING=1 ... READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import sdnotify

from agent import logs
from agent.ocpp.v16.vocabulary import connector_status

if TYPE_CHECKING:
    from agent.station.station import Station

WATCHDOG_FRACTION = 3  # ping every WatchdogSec/3: two pings may go missing before systemd acts
STATUS_MIN_INTERVAL_S = 1.0


def watchdog_interval_s(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd expects none (sd_watchdog_enabled(3))."""
    usec = environ.get("WATCHDOG_USEC", "")
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid if pid is not None else os.getpid()):
        return None  # meant for another process (our parent)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / WATCHDOG_FRACTION if value > 0 else None


def status_line(station: Station) -> str:
    """What a technician sees in `systemctl status evse-agent`."""
    ocpp = station.ocpp
    if ocpp.connected:
        link = f"OCPP connected/{ocpp.registration or 'registering'}"
    else:
        link = "OCPP DISCONNECTED" + (f" ({ocpp.last_error})" if ocpp.last_error else "")
    parts = [link[:120]]
    if not station.availability.station_operative:
        parts.append("station Inoperative")
    for rt in station.connectors.values():
        view = rt.controller.view()
        text = f"{rt.id}: {connector_status(view.status)}"  # as the CSMS (and `evse status`) shows it
        if view.faults:
            text += f" ({', '.join(view.faults)})"
        if view.contactor_closed and rt.last_reading is not None and rt.last_reading.power_w is not None:
            text += f" {rt.last_reading.power_w / 1000:.1f} kW"
        parts.append(text)
    parts.append(f"journal {station.journal.pending_count()} pending")
    if station.channel.control_lost:
        parts.append("CONTROL LOOP LOST")
    if station.recorder.storage_error:
        parts.append("JOURNAL NOT WRITABLE")
    # `systemctl status` is readable by every user: the patterns and the station's secrets (agent.logs)
    return station.logs.redact(logs.REDACTOR.redact("; ".join(parts)))


class ServiceNotifier:
    def __init__(self, station: Station, *, environ: Mapping[str, str] = os.environ,
                 clock: Callable[[], float] = time.monotonic, ping_watchdog: bool = True):
        self.station = station
        self.clock = clock
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None  # connects to $NOTIFY_SOCKET
        # False when the control process pings (agent.app): one pinger, the one with the control loop
        self.watchdog_every_s = watchdog_interval_s(environ) if self.enabled and ping_watchdog else None
        self.ready = False
        self.on_ready: Callable[[], None] = lambda: None  # the control process may start pinging (agent.app)
        self._next_ping = 0.0
        self._next_status = 0.0
        self._status: str | None = None

    def send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def control_step_done(self) -> None:
        """Called by the control loop after every completed step (ControlChannel.after_control_step)."""
        if not self.enabled:
            return
        now = self.clock()
        if not self.ready:
            self.ready = True
            self._status = status_line(self.station)
            self._next_status = now + STATUS_MIN_INTERVAL_S
            self.send(f"READY=1\nSTATUS={self._status}")
            self.on_ready()
        if self.watchdog_every_s is not None and now >= self._next_ping:
            self._next_ping = now + self.watchdog_every_s
            self.send("WATCHDOG=1")
        if now >= self._next_status:
            self._next_status = now + STATUS_MIN_INTERVAL_S
            line = status_line(self.station)
            if line != self._status:
                self._status = line
                self.send(f"STATUS={line}")

    def reloading(self) -> None:
        self.send("RELOADING=1\nSTATUS=reloading the configuration")

    def reloaded(self) -> None:
        self._status = None  # the next control step reports the status again
        self.send("READY=1")

    def stopping(self, reason: str) -> None:
        self.send(f"STOPPING=1\nSTATUS=stopping ({reason})")
