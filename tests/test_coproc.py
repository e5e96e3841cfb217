"""Safety co-processor link: protocol, decoder robustness, config, and the host against the simulated MCU
over a real pty pair and over python-can's virtual bus."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.board import BoardConfigError, ConfigTable
from hal.build import BuildContext
from hal.coproc import CoprocessorConnector, CoprocessorLink, build_coprocessor
from hal.coproc.can import CanTransport, Reassembler, segment
from hal.coproc.mcu_ports import CanPort, PtyPort
from hal.coproc.protocol import (
    HOST_TO_MCU_TYPES,
    MCU_TO_HOST_TYPES,
    MESSAGE_TYPES,
    AllowPower,
    Capability,
    CpCode,
    ErrorFlag,
    Event,
    EventCode,
    FrameDecoder,
    Hello,
    HelloReason,
    KeepAlive,
    LockState,
    McuHello,
    McuKeepAlive,
    OffReason,
    PilotCode,
    ProtocolError,
    RcdTest,
    ResetFaults,
    SetLock,
    SetPilot,
    Status,
    cobs_decode,
    cobs_encode,
    crc32,
    decode_payload,
    encode_frame,
    encode_payload,
    seal,
)
from hal.coproc.sim_mcu import STATUS_PERIOD_S, SimMcu
from hal.coproc.uart import UartTransport
from hal.interfaces import CpState, HardwareError, PilotMode
from hal.sim.connector import SimEvSpec

CHARGING_STATUS = Status(
    connector=1,
    cp_state=CpCode.C,
    cp_high_mv=5624,
    cp_low_mv=-12000,
    diode_ok=True,
    pp_ampacity_a=32,
    pilot_mode=PilotCode.PWM,
    duty_centi_percent=2667,
    allow_power=True,
    relay_commanded=True,
    relay_feedback=True,
    lock_commanded=True,
    lock_state=LockState.LOCKED,
    error_flags=ErrorFlag(0),
)
FAULTED_STATUS = replace(
    CHARGING_STATUS,
    connector=2,
    cp_state=CpCode.INVALID,
    cp_high_mv=-1,
    cp_low_mv=-32768,
    diode_ok=False,
    pp_ampacity_a=255,
    pilot_mode=PilotCode.F,
    duty_centi_percent=0,
    relay_commanded=False,
    lock_state=LockState.MOVING,
    error_flags=ErrorFlag.RELAY_FAULT | ErrorFlag.CP_INVALID,
)
ONE_OF_EACH = [
    Hello(0, 1, 0, 3000),
    KeepAlive(0, 0xFFFFFFFF),
    SetPilot(2, PilotCode.PWM, 2667),
    AllowPower(1, True),
    SetLock(1, False),
    RcdTest(3),
    ResetFaults(1, ErrorFlag.HOST_TIMEOUT | ErrorFlag.RCD_TRIPPED),
    McuHello(0, 1, 0, HelloReason.BOOT, 2, Capability.LOCK | Capability.RCD, 3000, 100, "fw 1.2.3"),
    McuKeepAlive(0, 123456, 789),
    CHARGING_STATUS,
    FAULTED_STATUS,
    Event(1, EventCode.POWER_OFF, OffReason.EV_STOPPED),
]


def frame(message, seq: int = 0) -> bytes:
    return encode_frame(encode_payload(message, seq))


# --- protocol ------------------------------------------------------------------------------------------


def test_crc_is_crc32_iso_hdlc():
    assert crc32(b"123456789") == 0xCBF43926


# The vectors of docs/coprocessor-protocol.md section 11, so the document and the code cannot drift apart.
DOC_VECTORS = [
    (KeepAlive(0, 0x12345678), 7, "03 02 07 09 78 56 34 12 21 A6 DF 99 00"),
    (AllowPower(1, True), 0x2A, "09 11 2A 01 01 07 2D 27 92 00"),
    (SetPilot(1, PilotCode.PWM, 2667), 3, "0B 10 03 01 01 6B 0A C8 8F 16 2A 00"),
    (CHARGING_STATUS, 0x10, "13 90 10 01 02 F8 15 20 D1 01 20 01 6B 0A 01 01 01 01 01 01 05 31 69 89 C6 00"),
]


@pytest.mark.parametrize(("message", "seq", "expected"), DOC_VECTORS)
def test_documented_frames(message, seq, expected):
    assert frame(message, seq).hex(" ").upper() == expected
    accept = MCU_TO_HOST_TYPES if message.TYPE >= 0x80 else HOST_TO_MCU_TYPES
    assert FrameDecoder(accept).feed(bytes.fromhex(expected)) == [(seq, message)]


def test_documented_can_segments():
    segments = [s.hex(" ").upper() for s in segment(seal(encode_payload(CHARGING_STATUS, 0x10)))]
    assert segments == [
        "00 90 10 01 02 F8 15 20",
        "01 D1 01 20 01 6B 0A 01",
        "02 01 01 01 01 00 00 31",
        "83 69 89 C6",
    ]


@pytest.mark.parametrize(
    ("data", "encoded"),
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (
            bytes(range(1, 255)),
            b"\xff" + bytes(range(1, 255)),
        ),  # exactly one full block: no empty block after
        (bytes(range(1, 255)) + b"\x00", b"\xff" + bytes(range(1, 255)) + b"\x01\x01"),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
        (b"\x00" + bytes(range(1, 255)), b"\x01\xff" + bytes(range(1, 255))),
    ],
)
def test_cobs_reference_vectors(data, encoded):
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200) | st.lists(st.sampled_from([0, 1, 0xFF]), max_size=800).map(bytes))
def test_cobs_round_trip_never_contains_zero(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


def test_every_message_type_round_trips():
    assert {type(m) for m in ONE_OF_EACH} == set(MESSAGE_TYPES.values())
    for seq, message in enumerate(ONE_OF_EACH):
        assert decode_payload(encode_payload(message, seq)) == (seq, message)


def test_longer_payload_from_a_newer_minor_version_is_accepted():
    payload = encode_payload(AllowPower(1, False), 9) + b"\x42\x43"
    assert decode_payload(payload) == (9, AllowPower(1, False))


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"\x11\x00", "bad_length"),  # not even a header
        (b"\x7e\x00\x01", "unknown_type"),
        (b"\x10\x00\x01\x01\x6b", "bad_length"),  # SetPilot cut short
        (b"\x11\x00\x01\x02", "bad_field"),  # boolean 2
        (b"\x10\x00\x01\x07\x00\x00", "bad_field"),  # pilot mode 7
    ],
)
def test_bad_payloads_are_named(payload, kind):
    with pytest.raises(ProtocolError) as caught:
        decode_payload(payload)
    assert caught.value.kind == kind


def test_encoding_out_of_range_values_fails_loudly():
    with pytest.raises(ValueError, match="SetPilot"):
        encode_payload(SetPilot(1, PilotCode.PWM, 70000), 0)


# --- decoder robustness ------------------------------------------------------------------------------------


def host_decoder() -> FrameDecoder:
    return FrameDecoder(MCU_TO_HOST_TYPES)


def test_bytes_split_across_reads_still_decode():
    stream = b"".join(
        frame(m, seq) for seq, m in enumerate([CHARGING_STATUS, McuKeepAlive(0, 1, 2), CHARGING_STATUS])
    )
    decoder = host_decoder()
    decoded = [m for byte in stream for m in decoder.feed(bytes([byte]))]
    assert [m for _, m in decoded] == [CHARGING_STATUS, McuKeepAlive(0, 1, 2), CHARGING_STATUS]
    assert decoder.stats.dropped == 0 and decoder.stats.sequence_gaps == 0


def test_truncated_frame_is_dropped_and_the_next_one_decodes():
    good = frame(CHARGING_STATUS, 1)
    decoder = host_decoder()
    assert decoder.feed(good[:9] + b"\x00" + good) == [(1, CHARGING_STATUS)]
    assert decoder.stats.dropped == 1 and decoder.stats.frames_ok == 1


def test_crc_error_is_counted_and_dropped():
    body = bytearray(seal(encode_payload(CHARGING_STATUS, 1)))
    body[5] ^= 0x10
    decoder = host_decoder()
    assert decoder.feed(cobs_encode(bytes(body)) + b"\x00") == []
    assert decoder.stats.crc_errors == 1


def test_garbage_between_frames_is_skipped():
    rng = random.Random(7)
    garbage = bytes(rng.randrange(256) for _ in range(300))
    decoder = host_decoder()
    decoded = decoder.feed(frame(CHARGING_STATUS, 1) + garbage + b"\x00" + frame(CHARGING_STATUS, 2))
    assert decoded == [(1, CHARGING_STATUS), (2, CHARGING_STATUS)]
    assert decoder.stats.dropped >= 1


def test_oversize_frame_is_dropped_up_to_the_next_delimiter():
    decoder = host_decoder()
    assert decoder.feed(b"\x05" * 500) == []
    assert decoder.feed(b"\x05" * 100 + b"\x00" + frame(CHARGING_STATUS, 3)) == [(3, CHARGING_STATUS)]
    assert decoder.stats.oversize == 1


def test_wrong_direction_unknown_type_and_lost_frames_are_counted():
    decoder = host_decoder()
    unknown = cobs_encode(seal(b"\xee\x04\x01")) + b"\x00"
    stream = frame(CHARGING_STATUS, 1) + frame(AllowPower(1, True), 2) + unknown + frame(CHARGING_STATUS, 5)
    assert [seq for seq, _ in decoder.feed(stream)] == [1, 5]
    assert decoder.stats.unknown_type == 2  # a host message looped back, and type 0xEE
    assert decoder.stats.sequence_gaps == 3  # 2, 3 and 4 never arrived intact


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_decoder_survives_any_bytes_and_resynchronises(noise, cuts):
    decoder = host_decoder()
    stream = noise + b"\x00" + frame(CHARGING_STATUS, 42)
    pieces, start = [], 0
    for cut in cuts * 20:
        pieces.append(stream[start : start + cut])
        start += cut
    pieces.append(stream[start:])
    decoded = [m for piece in pieces for m in decoder.feed(piece)]
    assert decoded[-1] == (42, CHARGING_STATUS)


def test_can_reassembly_drops_broken_sequences_and_keeps_ids_apart():
    reassembler = Reassembler(MCU_TO_HOST_TYPES)
    first = segment(seal(encode_payload(CHARGING_STATUS, 1)))
    second = segment(seal(encode_payload(replace(CHARGING_STATUS, connector=2), 2)))
    assert [reassembler.feed(0x111, s) for s in first[:1] + first[2:]] == [None] * 3  # segment 1 lost
    assert reassembler.stats.framing_errors >= 1
    results = []
    for one, two in zip(first, second, strict=True):  # two connectors interleaved on their own ids
        results += [reassembler.feed(0x111, one), reassembler.feed(0x112, two)]
    assert [r for r in results if r] == [(1, CHARGING_STATUS), (2, replace(CHARGING_STATUS, connector=2))]


# --- config ------------------------------------------------------------------------------------------------


def coproc_table(**data) -> ConfigTable:
    return ConfigTable(data, "[coprocessor]", Path("board.toml"))


def test_build_uart_link_with_defaults():
    link = build_coprocessor(
        coproc_table(transport="uart", port="/dev/ttyAMA0"), BuildContext(Path("board.toml"))
    )
    assert isinstance(link.transport, UartTransport)
    assert (link.transport.port, link.transport.baudrate) == ("/dev/ttyAMA0", 115200)
    assert (link.keepalive_s, link.mcu_timeout_s, link.status_timeout_s) == (1.0, 3.0, 1.0)
    assert isinstance(link.connector(2), CoprocessorConnector)
    assert link.connector(2) is link.connector(2)


def test_build_can_link():
    table = coproc_table(
        transport="can", can_interface="virtual", can_channel="x", can_base_id=0x320, keepalive_s=0.5
    )
    link = build_coprocessor(table, BuildContext(Path("board.toml")))
    assert isinstance(link.transport, CanTransport)
    assert (link.transport.interface, link.transport.channel, link.transport.base_id) == (
        "virtual",
        "x",
        0x320,
    )
    assert link.keepalive_s == 0.5


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"transport": "spi"}, 'transport: must be one of "uart", "can", got "spi"'),
        ({"transport": "uart"}, "port: required key is missing"),
        ({"transport": "uart", "port": "/dev/x", "speed": 1}, "speed: unknown key"),
        (
            {"transport": "uart", "port": "/dev/x", "can_channel": "can0"},
            'can_channel: does not apply to transport = "uart"',
        ),
        ({"transport": "uart", "port": "/dev/x", "baudrate": 12345}, "baudrate: must be 9600, 19200"),
        (
            {"transport": "uart", "port": "/dev/x", "keepalive_s": 2.0},
            "keepalive_s: must be at most half of mcu_timeout_s",
        ),
        (
            {"transport": "uart", "port": "/dev/x", "status_timeout_s": "1"},
            'status_timeout_s: expected a number, got "1"',
        ),
        ({"transport": "can"}, "can_channel: required key is missing"),
        (
            {"transport": "can", "can_channel": "can0", "port": "/dev/x"},
            'port: does not apply to transport = "can"',
        ),
        (
            {"transport": "can", "can_channel": "can0", "can_base_id": 0x105},
            "can_base_id: must be a multiple of 0x20",
        ),
    ],
)
def test_config_errors_name_file_and_key(data, error):
    with pytest.raises(BoardConfigError) as caught:
        build_coprocessor(coproc_table(**data), BuildContext(Path("board.toml")))
    message = str(caught.value)
    assert message.startswith("board.toml: [coprocessor].") and error in message
    assert "\n" not in message


# --- end to end: host link <-> simulated MCU ------------------------------------------------------------------

FAST_EV = SimEvSpec(response_s=0.05)
KEEPALIVE_S = 0.2
MCU_TIMEOUT_S = 1.0  # the smallest the MCU accepts
STATUS_TIMEOUT_S = 0.5


@dataclass
class Rig:
    mcu: SimMcu
    link: CoprocessorLink
    conn: CoprocessorConnector
    where: str  # pty path or CAN description

    def flags(self) -> ErrorFlag:
        status = self.link.last_status(1)
        assert status is not None
        return status.error_flags

    def events(self, code: EventCode) -> list[Event]:
        return [e for e in self.link.events if e.code is code]


async def eventually(check: Callable[[], object], timeout: float = 1.0, what: str = "condition") -> float:
    """Poll while the event loop runs the link; return how long it took. A HardwareError counts as not yet."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except HardwareError:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.005)


def state_is(rig: Rig, state: CpState) -> Callable[[], bool]:
    return lambda: rig.conn.pilot.read().state is state


async def start_charging(rig: Rig) -> None:
    """Plug, lock, offer 16 A, let the EV ask, allow power, see the contactor close."""
    conn = rig.conn
    rig.mcu.plug()
    await eventually(state_is(rig, CpState.B), what="state B")
    conn.lock.set_locked(True)
    conn.pilot.set_pwm(26.67)
    await eventually(state_is(rig, CpState.C), what="state C")
    conn.contactor.set_closed(True)
    await eventually(conn.contactor.feedback_closed, what="contactor closed")


@pytest.fixture
async def pty_rig():
    port = PtyPort()
    mcu = SimMcu(port, ev=FAST_EV).start()
    table = coproc_table(
        transport="uart",
        port=port.host_path,
        keepalive_s=KEEPALIVE_S,
        mcu_timeout_s=MCU_TIMEOUT_S,
        status_timeout_s=STATUS_TIMEOUT_S,
    )
    link = build_coprocessor(table, BuildContext(Path("board.toml")))
    rig = Rig(mcu, link, link.connector(1), port.host_path)
    await link.start()
    yield rig
    await link.close()
    mcu.stop()


async def test_charging_session_and_mcu_opening_on_its_own(pty_rig):
    rig, conn = pty_rig, pty_rig.conn
    assert rig.link.mcu is not None and rig.link.mcu.connector_count == 1
    assert conn.pilot.read().state is CpState.A  # start() waited until the MCU left its boot-time F
    assert rig.flags() == 0  # MCU_RESTARTED acknowledged
    assert conn.proximity.read_ampacity() is None

    rig.mcu.plug()
    await eventually(state_is(rig, CpState.B))
    assert conn.proximity.read_ampacity() == 32.0
    conn.lock.set_locked(True)
    conn.pilot.set_pwm(26.67)
    assert conn.pilot.output.mode is PilotMode.PWM and conn.pilot.output.duty_percent == 26.67
    await eventually(state_is(rig, CpState.C))
    reading = conn.pilot.read()
    assert reading.low_v == -12.0 and reading.diode_ok
    await asyncio.sleep(0.1)
    assert not conn.contactor.feedback_closed()  # the EV asks, but the host has not allowed power

    conn.contactor.set_closed(True)
    await eventually(conn.contactor.feedback_closed)
    assert conn.lock.is_locked()
    assert rig.events(EventCode.POWER_ON)

    rig.mcu.set_ev_state("B")  # S2 opens: the MCU must open without waiting for the host
    took = await eventually(lambda: not conn.contactor.feedback_closed(), timeout=1.0)
    assert took < STATUS_PERIOD_S
    assert conn.contactor.commanded_closed  # the host still allows: the MCU opened on its own
    assert rig.events(EventCode.POWER_OFF)[-1].detail == OffReason.EV_STOPPED

    rig.mcu.set_ev_state(None)  # the EV resumes while power is still allowed
    await eventually(conn.contactor.feedback_closed)
    conn.contactor.set_closed(False)
    await eventually(lambda: not conn.contactor.feedback_closed())
    assert rig.link.stats.dropped == 0 and rig.mcu.stats.dropped == 0


async def test_lost_keepalive_opens_sets_f_and_needs_the_agent_to_acknowledge(pty_rig):
    rig, conn = pty_rig, pty_rig.conn
    await start_charging(rig)

    time.sleep(MCU_TIMEOUT_S + 0.3)  # the host's event loop hangs: no keep-alive leaves it
    snapshot = rig.mcu.snapshot()
    assert snapshot["flags"] & ErrorFlag.HOST_TIMEOUT
    assert not snapshot["contacts_closed"] and snapshot["pilot_mode"] == "F" and not snapshot["locked"]

    await eventually(lambda: rig.flags() & ErrorFlag.HOST_TIMEOUT)
    status = rig.link.last_status(1)
    assert not status.relay_feedback and not status.allow_power
    with pytest.raises(HardwareError, match=r"withdrew power on its own \(HOST_TIMEOUT\)"):
        conn.pilot.read()
    await asyncio.sleep(0.4)
    snapshot = rig.mcu.snapshot()
    assert not snapshot["coil"]  # the link never re-allows power by itself,
    assert snapshot["pilot_mode"] == "F" and not snapshot["locked"]  # nor re-offers PWM or re-locks

    conn.contactor.set_closed(False)  # what the agent does on a pilot fault: the acknowledgement
    await eventually(lambda: rig.flags() == 0, what="flags reset")
    # only now does the link re-apply the agent's pilot (the MCU held F), and the EV answers it
    await eventually(state_is(rig, CpState.C), what="EV back in C")
    conn.lock.set_locked(True)
    conn.contactor.set_closed(True)  # a new permission works again
    await eventually(conn.contactor.feedback_closed, what="contactor closed again")


async def test_rcd_trip_opens_and_reset_needs_the_residual_current_gone(pty_rig):
    rig, conn = pty_rig, pty_rig.conn
    await start_charging(rig)
    rig.mcu.set_fault("rcd", True)
    await eventually(conn.rcd.tripped)
    assert not conn.contactor.feedback_closed()
    assert rig.events(EventCode.POWER_OFF)[-1].detail == OffReason.FAULT

    conn.contactor.set_closed(False)
    assert conn.rcd.reset() is False  # the residual current is still there
    await asyncio.sleep(0.1)
    assert conn.rcd.tripped()

    rig.mcu.set_fault("rcd", False)
    await eventually(lambda: not rig.flags() & ErrorFlag.RCD_INPUT_ACTIVE)
    assert conn.rcd.tripped()  # latched
    assert conn.rcd.reset() is True
    await eventually(lambda: not conn.rcd.tripped())


async def test_diode_fault_is_flagged_opens_and_latches_until_unplug(pty_rig):
    rig, conn = pty_rig, pty_rig.conn
    await start_charging(rig)
    rig.mcu.set_fault("diode", True)
    await eventually(lambda: not conn.pilot.read().diode_ok)
    reading = conn.pilot.read()
    assert reading.low_v == -reading.high_v  # the EV loads the negative half too
    assert rig.flags() & ErrorFlag.DIODE_FAULT
    await eventually(lambda: not conn.contactor.feedback_closed())

    rig.mcu.set_fault("diode", False)
    await asyncio.sleep(0.1)
    assert not conn.pilot.read().diode_ok and not conn.contactor.feedback_closed()
    rig.mcu.unplug()
    await eventually(lambda: conn.pilot.read().state is CpState.A and conn.pilot.read().diode_ok)


async def test_silent_mcu_makes_reads_raise_after_status_timeout(pty_rig):
    rig, conn = pty_rig, pty_rig.conn
    rig.mcu.plug()
    await eventually(state_is(rig, CpState.B))
    rig.mcu.freeze()
    frozen_at = time.monotonic()

    def read_fails() -> bool:
        try:
            conn.pilot.read()
        except HardwareError as exc:
            read_fails.error = str(exc)
            return True
        return False

    await eventually(read_fails, timeout=STATUS_TIMEOUT_S + 0.5)
    assert time.monotonic() - frozen_at > STATUS_TIMEOUT_S - STATUS_PERIOD_S  # not before the timeout
    assert rig.where in read_fails.error and "no status for connector 1" in read_fails.error
    assert "last frame from the MCU" in read_fails.error
    with pytest.raises(HardwareError):
        conn.contactor.feedback_closed()

    rig.mcu.resume()
    await eventually(state_is(rig, CpState.B), what="reads recover")


async def test_corrupted_frames_between_good_ones_change_nothing(pty_rig):
    rig, conn = pty_rig, pty_rig.conn
    await start_charging(rig)
    host_drops, mcu_drops = rig.link.stats.dropped, rig.mcu.stats.dropped

    # MCU -> host: a Status saying "EV gone, relay open" with one bit flipped, garbage, a truncated frame
    lying = bytearray(
        seal(encode_payload(replace(CHARGING_STATUS, cp_state=CpCode.A, relay_feedback=False), 1))
    )
    lying[4] ^= 0x01
    rig.mcu.send_raw(cobs_encode(bytes(lying)) + b"\x00")
    rig.mcu.send_raw(b"\x13\x37\xde\xad\xbe\xef\x00")
    rig.mcu.send_raw(frame(replace(CHARGING_STATUS, relay_feedback=False), 2)[:12] + b"\x00")
    # host -> MCU: a corrupted AllowPower(false), written to the pty like a second writer on the line
    withdraw = bytearray(seal(encode_payload(AllowPower(1, False), 9)))
    withdraw[3] ^= 0x01
    fd = os.open(rig.where, os.O_WRONLY | os.O_NOCTTY)
    try:
        os.write(fd, cobs_encode(bytes(withdraw)) + b"\x00")
    finally:
        os.close(fd)

    await eventually(lambda: rig.link.stats.dropped >= host_drops + 3 and rig.mcu.stats.dropped > mcu_drops)
    await asyncio.sleep(0.2)
    assert conn.contactor.feedback_closed() and conn.pilot.read().state is CpState.C
    assert rig.mcu.snapshot()["coil"]
    assert rig.link.stats.crc_errors >= 1 and rig.mcu.stats.crc_errors == 1


async def test_mcu_reboot_withdraws_power_until_acknowledged(pty_rig):
    rig, conn = pty_rig, pty_rig.conn
    await start_charging(rig)
    rig.mcu.reboot()
    await eventually(lambda: rig.flags() & ErrorFlag.MCU_RESTARTED)
    with pytest.raises(HardwareError, match="MCU_RESTARTED"):
        conn.pilot.read()
    conn.contactor.set_closed(False)
    await eventually(lambda: rig.flags() == 0)
    # the link restored the commanded pilot and lock on the fresh MCU
    await eventually(state_is(rig, CpState.C))
    assert rig.mcu.snapshot()["pilot_mode"] == "PWM" and conn.lock.is_locked()


async def test_a_restarted_host_withdraws_what_the_previous_one_allowed(pty_rig):
    rig = pty_rig
    await start_charging(rig)
    await rig.link.transport.close()  # the agent process dies: its port closes, nothing more is sent

    table = coproc_table(
        transport="uart", port=rig.where, keepalive_s=KEEPALIVE_S, mcu_timeout_s=MCU_TIMEOUT_S
    )
    successor = build_coprocessor(table, BuildContext(Path("board.toml")))
    conn = successor.connector(1)
    await successor.start()  # well before the MCU's keep-alive timeout
    try:
        assert not conn.contactor.feedback_closed() and not conn.lock.is_locked()
        assert conn.pilot.output.mode is PilotMode.X1
        await eventually(lambda: conn.pilot.read().state is CpState.B, what="EV answers X1")
    finally:
        await successor.close()


async def test_session_over_python_can_virtual_bus():
    channel = f"coproc-{uuid.uuid4().hex}"
    mcu = SimMcu(CanPort("virtual", channel), ev=FAST_EV).start()
    table = coproc_table(
        transport="can",
        can_interface="virtual",
        can_channel=channel,
        keepalive_s=KEEPALIVE_S,
        mcu_timeout_s=MCU_TIMEOUT_S,
        status_timeout_s=STATUS_TIMEOUT_S,
    )
    link = build_coprocessor(table, BuildContext(Path("board.toml")))
    rig = Rig(mcu, link, link.connector(1), channel)
    await link.start()
    try:
        assert link.mcu is not None and link.mcu.protocol_major == 1
        await start_charging(rig)
        assert rig.conn.proximity.read_ampacity() == 32.0

        mcu.send_raw(b"\x01\xde\xad")  # a stray segment without its start
        mcu.set_ev_state("B")
        await eventually(lambda: not rig.conn.contactor.feedback_closed())
        assert rig.events(EventCode.POWER_OFF)[-1].detail == OffReason.EV_STOPPED
        assert link.stats.framing_errors == 1 and link.stats.crc_errors == 0

        mcu.freeze()
        await eventually(lambda: not _reads(rig), timeout=STATUS_TIMEOUT_S + 0.5)
    finally:
        await link.close()
        mcu.stop()


def _reads(rig: Rig) -> bool:
    try:
        rig.conn.pilot.read()
    except HardwareError:
        return False
    return True
