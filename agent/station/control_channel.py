"""The station's end of the channel to the control loop (agent.control.link): events go down to a connector's
controller; its state comes back into the replica `rt.controller`, and the commands it decided that are not
hardware (StartTransaction, StatusChanged, ...) are carried out here, one at a time and in order. It also
watches the control loop: a lost control process faults every connector at the CSMS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from agent.control import channel
from agent.control.link import ControlLink, ControlLost, InProcessLink
from agent.core import controller as ctl
from agent.station.connector import ConnectorRuntime
from agent.station.csms_link import CsmsLink
from agent.station.journal import Journal

log = logging.getLogger("evse.station")

CONTROL_LOST_REPORT_S = 5.0  # a lost control process: time for the Faulted status to reach the CSMS


class ControlChannel:
    log: logging.Logger | logging.LoggerAdapter = log  # the station hands it its own (agent.logs)

    def __init__(self, link: ControlLink, connectors: dict[int, ConnectorRuntime], journal: Journal,
                 csms: Callable[[], CsmsLink], execute: Callable[[ConnectorRuntime, ctl.Command], None],
                 clock: Callable[[], float] = time.monotonic):
        """`execute`: carries out one command of the control loop (the station routes it to its pieces);
        `csms`: the station's adapter, built after this channel."""
        self.link = link
        self._connectors = connectors
        self._journal = journal
        self._csms = csms
        self._execute = execute
        self._clock = clock
        self.control_loop_alive_at = 0.0
        self.control_lost: str | None = None
        # called when the control loop reports a completed step: systemd READY and STATUS (agent.service)
        self.after_control_step: Callable[[], None] | None = None
        self._outputs: deque[tuple[ConnectorRuntime, ctl.Command]] = deque()
        self._executing = False
        link.on_output = self._on_output
        link.on_state = self._on_state
        link.on_alive = self._control_alive
        link.on_lost = self._control_lost

    def dispatch(self, rt: ConnectorRuntime, event: ctl.Event) -> None:
        """Hand an event to the connector's controller, in the control loop."""
        self.link.send_event(rt.id, event)

    def dispatch_to(self, connector_id: int, event: ctl.Event) -> None:
        self.dispatch(self._connectors[connector_id], event)

    def dispatch_all(self, event: ctl.Event) -> None:
        for rt in self._connectors.values():
            self.dispatch(rt, event)

    def step(self) -> None:
        """One step of an in-process control loop (tests and benchmarks drive it by hand)."""
        assert isinstance(self.link, InProcessLink), "the control loop runs in its own process"
        self.link.control.step()

    async def run(self) -> None:
        """Runs while the control loop does. When it is lost (the control process died or stalls), every
        connector is reported Faulted to the CSMS, then the station stops: systemd restarts the unit."""
        try:
            await self.link.run()
        except ControlLost as exc:
            self._control_lost(str(exc))
        if self.control_lost is None:
            self._control_lost("the control loop ended")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONTROL_LOST_REPORT_S):
                while self._journal.pending_count() and self._csms().accepted:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the Faulted StatusNotifications on their way

    def _control_alive(self) -> None:
        self.control_loop_alive_at = self._clock()
        if self.after_control_step is not None:
            self.after_control_step()

    def _control_lost(self, why: str) -> None:
        if self.control_lost is not None:
            return
        self.control_lost = why
        self.log.critical("control loop lost: %s; every connector is reported Faulted", why)
        for rt in self._connectors.values():
            self._csms().send_status(rt.id, ctl.ConnectorStatus.FAULTED, info="control process lost",
                                     control_lost=True)

    def report_status(self, rt: ConnectorRuntime, status: ctl.ConnectorStatus, fault: ctl.Fault | None,
                      info: str | None) -> None:
        """A status the controller decided, to the CSMS; none once the control loop is lost (every connector
        stays Faulted)."""
        self.log.info("connector %d: %s%s", rt.id, status.value, f" ({fault.value} fault)" if fault else "")
        if self.control_lost is None:
            self._csms().send_status(rt.id, status, fault, info)

    def _on_state(self, connector_id: int, state: dict, indicator: str | None) -> None:
        rt = self._connectors.get(connector_id)
        if rt is not None:
            channel.apply_controller_state(rt.controller, state)
            rt.indicator = indicator

    def _on_output(self, connector_id: int, commands: list[ctl.Command]) -> None:
        """Commands from the control loop, carried out in the order they were decided: those that arrive
        while earlier ones are carried out (an in-process link delivers at once) wait for them."""
        rt = self._connectors.get(connector_id)
        if rt is None:
            return
        self._outputs.extend((rt, command) for command in commands)
        if self._executing:
            return
        self._executing = True
        try:
            while self._outputs:
                self._execute(*self._outputs.popleft())
        finally:
            self._executing = False
