"""The technician's hardware checks (`evse hw ...`, control commands hw.*) and fault reset, run by the control
loop. Each check answers a report dict of agent.cli.hw: {"ok": true, ...} or {"ok": false, "exit_code", "error"}.
Whether a test that switches something may run (no EV, no transaction, contactor open, no latched fault) is
decided in the control loop, on the controller itself, where nothing can change between check and test."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.cli import hw as hw_cli
from agent.control import channel
from agent.control.link import ControlLink, ControlLost

log = logging.getLogger("evse.station")


class HardwareTests:
    def __init__(self, link: ControlLink, control_started: Callable[[], bool]):
        """`control_started`: the control loop has completed a step (the board's devices are up)."""
        self._link = link
        self._control_started = control_started

    async def hw_meter(self, connector_id: int) -> dict:
        return self._starting() or await self._request("hw_meter", connector_id)

    async def hw_pilot(self, connector_id: int) -> dict:
        return self._starting() or await self._request("hw_pilot", connector_id)

    async def hw_contactor_test(self, connector_id: int) -> dict:
        """Close and open the contactor by hand, only with no EV (state A) and no transaction. The control
        loop leaves the connector alone meanwhile, so the controller neither takes the closed contactor for
        a fault nor acts on it; the test always opens it again, then supervision resumes (a contactor that
        stayed closed is then a weld fault, as it should be)."""
        return self._starting() or await self._request("hw_contactor_test", connector_id)

    async def hw_rcd_test(self, connector_id: int) -> dict:
        return self._starting() or await self._request("hw_rcd_test", connector_id)

    async def reset_faults(self, connector_id: int) -> list[str]:
        """`evse fault reset`: the RCD and a board's own latch are reset, then the controller's latched
        faults whose cause is gone; answers the faults still active."""
        faults = await self._link.request("reset_faults", connector=connector_id)
        return [str(f) for f in faults]

    async def _request(self, op: str, connector_id: int) -> dict:
        try:
            result = await self._link.request(op, connector=connector_id)
        except (channel.RequestFailed, ControlLost, TimeoutError) as exc:
            return {"ok": False, "exit_code": 1, "error": f"the control loop could not run it: {exc}"}
        assert isinstance(result, dict)
        return result

    def _starting(self) -> dict | None:
        """A refusal while the board is still being started (the control loop has not run yet)."""
        if self._control_started():
            return None
        return {"ok": False, "exit_code": hw_cli.EXIT_USAGE,
                "error": "the agent is still starting its devices; try again in a moment"}
