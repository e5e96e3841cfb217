"""RFID back-ends: pure parts directly; serial readers through real pty pairs with the test playing the
hardware on the master side; the HID reader with a stand-in evdev device, and with a real uinput
keyboard where /dev/uinput is usable."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tty
from collections import deque
from pathlib import Path

import evdev
import pytest
from evdev import ecodes

from hal.board import BoardConfigError, ConfigTable
from hal.build import BuildContext
from hal.rfid import build_rfid
from hal.rfid.common import ReaderStats, RetryBackoff, TagDebouncer
from hal.rfid.hid import HidReader
from hal.rfid.hid_keys import KeyLineDecoder, line_to_uid
from hal.rfid.pn532 import Ack, ErrorFrame, Nack, Pn532FrameParser, Pn532Reader, Response
from hal.rfid.rdm6300 import Rdm6300FrameParser, Rdm6300Reader, format_uid

UID_4 = bytes.fromhex("04A1B2C3")
UID_7 = bytes.fromhex("04112233445566")
UID_OTHER = bytes.fromhex("DEADBEEF")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fast_retry() -> RetryBackoff:
    return RetryBackoff(initial_s=0.02, maximum_s=0.1)


async def wait_until(condition, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def next_tag(reader, timeout: float = 3.0) -> str:
    return await asyncio.wait_for(reader.next_tag(), timeout)


@contextlib.asynccontextmanager
async def running(reader):
    await reader.start()
    try:
        yield reader
    finally:
        await reader.close()


class PtyPort:
    """A serial port the reader opens by name (the slave); the test is the device on the master."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # like a UART: no line editing or echo before the reader configures it
        self.name = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def pty_port():
    port = PtyPort()
    yield port
    port.close()


# ---- shared: debouncer, counters, back-off ------------------------------------------------------


def test_debouncer_one_id_per_presentation():
    clock = FakeClock()
    debouncer = TagDebouncer(hold_off_s=2.0, clock=clock)
    assert debouncer.accept("04A1B2C3")
    for clock.now in (0.5, 1.9, 3.5, 5.0):  # held: every sighting within 2 s of the previous one
        assert not debouncer.accept("04A1B2C3")
    assert debouncer.accept("DEADBEEF")  # another card passes at once
    clock.now = 5.5
    assert debouncer.accept("04A1B2C3")  # A was last seen at 5.0, but another card came in between
    clock.now = 7.6
    assert debouncer.accept("04A1B2C3")  # away for 2.1 s: presented again
    assert debouncer.repeats_suppressed == 4


def test_debouncer_hold_off_zero_reports_every_read():
    debouncer = TagDebouncer(hold_off_s=0, clock=FakeClock())
    assert all(debouncer.accept("04A1B2C3") for _ in range(3))


def test_stats_and_backoff():
    stats = ReaderStats()
    stats.drop("bad checksum")
    stats.timeout("no answer")
    assert (stats.frames_dropped, stats.timeouts, stats.last_error) == (1, 1, "no answer")
    backoff = RetryBackoff(initial_s=0.5, maximum_s=3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


# ---- PN532 ------------------------------------------------------------------------------------------

# Written from the PN532 user manual, independently of hal.rfid.pn532.
CHIP_ACK = bytes.fromhex("0000ff00ff00")
CHIP_NACK = bytes.fromhex("0000ffff0000")


def chip_frame(*payload: int | bytes) -> bytes:
    """A PN532 -> host information frame (TFI 0xD5)."""
    body = bytearray([0xD5])
    for part in payload:
        body += part if isinstance(part, bytes) else bytes([part])
    length_checksum = (256 - len(body)) % 256
    data_checksum = (256 - sum(body) % 256) % 256
    return b"\x00\x00\xff" + bytes([len(body), length_checksum]) + bytes(body) + bytes([data_checksum, 0])


def target_answer(uid: bytes) -> bytes:
    """InListPassiveTarget answer: NbTg 1, Tg 1, SENS_RES, SEL_RES, NFCIDLength, NFCID1."""
    sens_res = b"\x00\x04" if len(uid) == 4 else b"\x00\x44"
    return chip_frame(0x4B, 0x01, 0x01, sens_res, 0x08, len(uid), uid)


def corrupt(frame: bytes, index: int) -> bytes:
    return frame[:index] + bytes([frame[index] ^ 0x5A]) + frame[index + 1 :]


class Pn532Chip:
    """Plays a PN532 on the master side of a pty.

    Every command gets an ACK and its answer. Each InListPassiveTarget takes the next behaviour from
    `polls`: a UID (that card is in the field), or "bad_lcs", "bad_dcs", "truncated" (a card answer
    broken that way), "nack", "silent"; when `polls` is empty, no card is in the field.
    """

    def __init__(self, port: PtyPort):
        self.port = port
        self.polls: deque[bytes | str] = deque()
        self.commands: list[int] = []
        self.host_aborts = 0
        self.host_errors: list[str] = []
        self._rx = bytearray()

    def __enter__(self) -> Pn532Chip:
        asyncio.get_running_loop().add_reader(self.port.master, self._on_readable)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        asyncio.get_running_loop().remove_reader(self.port.master)
        if exc_type is None:
            assert self.host_errors == []  # the reader only ever sent well-formed frames

    def polls_received(self) -> int:
        return self.commands.count(0x4A)

    def _on_readable(self) -> None:
        try:
            self._rx += os.read(self.port.master, 1024)
            self._serve()
        except Exception as exc:  # an error in the emulator must fail the test, not vanish in the loop
            self.host_errors.append(repr(exc))

    def _serve(self) -> None:
        while (start := self._rx.find(b"\x00\xff")) >= 0 and len(self._rx) >= start + 4:
            length, length_checksum = self._rx[start + 2], self._rx[start + 3]
            if (length, length_checksum) == (0x00, 0xFF):  # the host aborts a command with an ACK
                self.host_aborts += 1
                del self._rx[: start + 4]
                continue
            end = start + 4 + length + 2
            if len(self._rx) < end:
                return
            body = bytes(self._rx[start + 4 : start + 4 + length])
            if (length + length_checksum) % 256 or (sum(body) + self._rx[end - 2]) % 256 or body[0] != 0xD4:
                self.host_errors.append(self._rx[start:end].hex())
            del self._rx[:end]
            self._answer(body[1])

    def _answer(self, command: int) -> None:
        self.commands.append(command)
        answers = {
            0x14: CHIP_ACK + chip_frame(0x15),  # SAMConfiguration
            0x02: CHIP_ACK + chip_frame(0x03, 0x32, 0x01, 0x06, 0x07),  # GetFirmwareVersion: PN532 1.6
            0x32: CHIP_ACK + chip_frame(0x33),  # RFConfiguration
        }
        if command == 0x4A:
            self.port.write(self._poll_answer(self.polls.popleft() if self.polls else "no card"))
        elif command in answers:
            self.port.write(answers[command])
        else:
            self.host_errors.append(f"unknown command {command:#x}")

    @staticmethod
    def _poll_answer(behaviour: bytes | str) -> bytes:
        if isinstance(behaviour, bytes):
            return CHIP_ACK + target_answer(behaviour)
        card = target_answer(UID_OTHER)
        return {
            "no card": CHIP_ACK + chip_frame(0x4B, 0x00),
            "bad_lcs": CHIP_ACK + corrupt(card, 4),
            "bad_dcs": CHIP_ACK + corrupt(card, len(card) - 2),
            "truncated": CHIP_ACK + card[:9],
            "nack": CHIP_NACK,
            "silent": b"",
        }[behaviour]


def pn532_reader(port: PtyPort, **options) -> Pn532Reader:
    settings = dict(poll_interval_s=0.01, ack_timeout_s=0.05, response_timeout_s=0.15, retry=fast_retry())
    return Pn532Reader(port.name, **(settings | options))


async def test_pn532_reads_4_and_7_byte_uids(pty_port):
    with Pn532Chip(pty_port) as chip:
        chip.polls.extend([UID_4, "no card", UID_7])
        async with running(pn532_reader(pty_port)) as reader:
            assert await next_tag(reader) == "04A1B2C3"
            assert await next_tag(reader) == "04112233445566"
            assert reader.firmware == "PN532 firmware 1.6"
            assert (reader.frames_dropped, reader.stats.timeouts) == (0, 0)
    assert chip.commands[:3] == [0x14, 0x02, 0x32]  # SAMConfiguration first, as the wake-up command


@pytest.mark.parametrize(
    ("fault", "dropped", "timeouts", "reason"),
    [
        ("bad_lcs", 1, 0, "bad LCS"),
        ("bad_dcs", 1, 0, "bad DCS"),
        ("truncated", 1, 0, "truncated frame"),
        ("nack", 1, 0, "Nack"),
        ("silent", 0, 1, "no ACK"),
    ],
)
async def test_pn532_broken_answer_gives_no_id_and_the_next_card_is_read(
    pty_port, fault, dropped, timeouts, reason
):
    with Pn532Chip(pty_port) as chip:
        chip.polls.extend([fault, "no card", UID_4])  # the broken answer carries UID_OTHER
        async with running(pn532_reader(pty_port)) as reader:
            await wait_until(lambda: chip.polls_received() >= 2)  # the broken poll is dealt with
            assert (reader.frames_dropped, reader.stats.timeouts) == (dropped, timeouts)
            assert reason in reader.last_error
            assert await next_tag(reader) == "04A1B2C3"
            assert reader.stats.reconnects == 0
    assert chip.host_aborts == 1  # the failed command was aborted with an ACK


async def test_pn532_card_held_for_several_polls_gives_one_id(pty_port):
    with Pn532Chip(pty_port) as chip:
        chip.polls.extend([UID_4] * 6 + [UID_7])
        async with running(pn532_reader(pty_port)) as reader:
            assert await next_tag(reader) == "04A1B2C3"
            assert await next_tag(reader) == "04112233445566"
            assert reader.debouncer.repeats_suppressed == 5


async def test_pn532_silent_chip_is_initialised_again(pty_port, caplog):
    with Pn532Chip(pty_port) as chip:
        chip.polls.extend(["silent"] * 3 + [UID_4])
        async with running(pn532_reader(pty_port)) as reader:
            assert await next_tag(reader) == "04A1B2C3"
            assert reader.stats.reconnects == 1
            assert reader.stats.timeouts == 3
    assert chip.commands.count(0x14) == 2  # woken up and configured again
    assert "3 polls in a row failed" in caplog.text


def test_pn532_parser_frames_split_joined_and_broken():
    stats = ReaderStats()
    parser = Pn532FrameParser(stats)
    stream = CHIP_ACK + chip_frame(0x03, 0x32, 0x01, 0x06, 0x07) + CHIP_NACK
    frames = [frame for byte in stream for frame in parser.feed(bytes([byte]))]  # one byte at a time
    assert frames == [Ack(), Response(0x03, bytes([0x32, 0x01, 0x06, 0x07])), Nack()]
    error_frame = bytes.fromhex("0000ff01ff7f8100")
    garbage = b"\x13\x37"
    frames = parser.feed(garbage + error_frame + corrupt(chip_frame(0x15), 6) + CHIP_ACK)
    assert frames == [ErrorFrame(), Ack()]
    assert stats.frames_dropped == 2 and "bad DCS" in stats.last_error  # the garbage and the bad DCS


def test_pn532_parser_extended_frame():
    body = bytes([0xD5, 0x4B]) + bytes(300)
    length = len(body).to_bytes(2, "big")
    frame = b"\x00\x00\xff\xff\xff" + length + bytes([-sum(length) & 0xFF]) + body
    frame += bytes([-sum(body) & 0xFF, 0x00])
    assert Pn532FrameParser(ReaderStats()).feed(frame) == [Response(0x4B, bytes(300))]


# ---- RDM6300 ------------------------------------------------------------------------------------


def rdm_frame(data: bytes, checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = functools.reduce(lambda a, b: a ^ b, data)
    return b"\x02" + f"{data.hex().upper()}{checksum:02X}".encode() + b"\x03"


CARD_A = bytes.fromhex("0F00A3B2C1")
CARD_B = bytes.fromhex("1A2B3C4D5E")


def test_rdm6300_uid_formats():
    assert format_uid(CARD_A, "hex5") == "0F00A3B2C1"
    assert format_uid(CARD_A, "hex4") == "00A3B2C1"
    assert format_uid(CARD_A, "dec10") == "0010728129"  # 0x00A3B2C1, as printed on the card


@pytest.mark.parametrize(
    ("chunks", "payloads", "dropped"),
    [
        ([rdm_frame(CARD_A)], [CARD_A], 0),
        ([rdm_frame(CARD_A, checksum=0x00)], [], 1),
        ([b"\xff\x00junk", rdm_frame(CARD_A), b"zz", rdm_frame(CARD_B)], [CARD_A, CARD_B], 2),
        ([rdm_frame(CARD_A)[:6], rdm_frame(CARD_A)[6:]], [CARD_A], 0),
        ([b"\x020F00", rdm_frame(CARD_B)], [CARD_B], 1),  # a frame cut short: resync on the next STX
        ([rdm_frame(CARD_A)[:-1] + b"\x04"], [], 1),  # no ETX
        ([b"\x02" + b"0G00A3B2C1" + b"00\x03"], [], 1),  # not hex
    ],
)
def test_rdm6300_parser(chunks, payloads, dropped):
    stats = ReaderStats()
    parser = Rdm6300FrameParser(stats)
    assert [payload for chunk in chunks for payload in parser.feed(chunk)] == payloads
    assert stats.frames_dropped == dropped


async def test_rdm6300_reader_over_a_serial_port(pty_port):
    async with running(Rdm6300Reader(pty_port.name, retry=fast_retry())) as reader:
        await wait_until(lambda: reader.connected)
        pty_port.write(b"\xff\x00noise" + rdm_frame(CARD_A, checksum=0x00) + b"xx" + rdm_frame(CARD_B)[:5])
        pty_port.write(rdm_frame(CARD_B)[5:])
        assert await next_tag(reader) == "1A2B3C4D5E"  # never the card of the bad frame
        assert reader.frames_dropped == 3  # noise, bad checksum, the bytes between frames


async def test_rdm6300_held_card_gives_one_id_until_away_for_the_hold_off(pty_port):
    clock = FakeClock()
    reader = Rdm6300Reader(pty_port.name, uid_format="hex4", hold_off_s=2.0, clock=clock, retry=fast_retry())
    async with running(reader):
        await wait_until(lambda: reader.connected)
        pty_port.write(rdm_frame(CARD_A) * 3)
        assert await next_tag(reader) == "00A3B2C1"
        await wait_until(lambda: reader.debouncer.repeats_suppressed == 2)
        for step, clock.now in enumerate((1.5, 3.0), start=3):  # still held: each frame < 2 s after the last
            pty_port.write(rdm_frame(CARD_A))
            await wait_until(lambda step=step: reader.debouncer.repeats_suppressed == step)
        clock.now = 5.5  # removed at 3.0, presented again 2.5 s later
        pty_port.write(rdm_frame(CARD_A))
        assert await next_tag(reader) == "00A3B2C1"


async def test_serial_port_that_disappears_is_retried_and_next_tag_keeps_waiting(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hal.rfid.rdm6300")
    first, second = PtyPort(), PtyPort()
    stable_name = tmp_path / "ttyRFID"  # like a /dev/serial/by-id link that follows the device
    stable_name.symlink_to(first.name)
    try:
        async with running(Rdm6300Reader(str(stable_name), retry=fast_retry())) as reader:
            await wait_until(lambda: reader.connected)
            first.write(rdm_frame(CARD_A))
            assert await next_tag(reader) == "0F00A3B2C1"

            waiting = asyncio.create_task(reader.next_tag())
            first.close()  # unplugged
            await wait_until(lambda: reader.stats.reconnects >= 3)  # still alive, still trying
            assert not reader.connected and not waiting.done()
            assert "retrying in" in caplog.text

            stable_name.unlink()
            stable_name.symlink_to(second.name)  # plugged in again
            await wait_until(lambda: reader.connected)
            second.write(rdm_frame(CARD_B))
            assert await asyncio.wait_for(waiting, 3) == "1A2B3C4D5E"
    finally:
        first.close()
        second.close()


async def test_missing_port_at_start_is_retried_not_raised(tmp_path):
    async with running(Rdm6300Reader(str(tmp_path / "nothing"), retry=fast_retry())) as reader:
        await wait_until(lambda: reader.stats.reconnects >= 2)
        assert "nothing" in reader.last_error


# ---- HID ----------------------------------------------------------------------------------------

SHIFT = ecodes.KEY_LEFTSHIFT


def keystrokes(text: str, enter: int = ecodes.KEY_ENTER) -> list[tuple[int, int]]:
    """(code, value) events a US keyboard produces typing `text` and Enter."""
    events = []
    for char in text:
        code = getattr(ecodes, f"KEY_{char.upper()}")
        if char.isupper():
            events += [(SHIFT, 1), (code, 1), (code, 0), (SHIFT, 0)]
        else:
            events += [(code, 1), (code, 0)]
    return events + [(enter, 1), (enter, 0)]


def decode(events: list[tuple[int, int]]) -> list[str]:
    decoder = KeyLineDecoder()
    return [line for code, value in events if (line := decoder.feed(code, value)) is not None]


def test_hid_keys_to_lines():
    assert decode(keystrokes("0010728129")) == ["0010728129"]
    assert decode(keystrokes("04A1b2C3") + keystrokes("12")) == ["04A1b2C3", "12"]
    keypad = [(ecodes.KEY_KP4, 1), (ecodes.KEY_KP2, 1), (ecodes.KEY_KP2, 2), (ecodes.KEY_KPENTER, 1)]
    assert decode(keypad) == ["42"]  # auto-repeat (value 2) is not a key press
    shift_one_then_one = [(SHIFT, 1), (ecodes.KEY_1, 1), (SHIFT, 0), (ecodes.KEY_1, 1), (ecodes.KEY_ENTER, 1)]
    assert decode(shift_one_then_one) == ["!1"]
    assert decode([(ecodes.KEY_F1, 1), (ecodes.KEY_ENTER, 1)]) == ["?"]  # unknown key: kept visible


@pytest.mark.parametrize(
    ("line", "id_format", "uid"),
    [
        ("0010728129", "decimal", "00A3B2C1"),
        ("4294967295", "decimal", "FFFFFFFF"),
        ("4294967296", "decimal", "00000100000000"),  # beyond 4 bytes: a 7-byte UID
        (str(int.from_bytes(UID_7, "big")), "decimal", "04112233445566"),
        ("04a1b2c3", "hex", "04A1B2C3"),
        ("04:A1:B2:C3", "hex", "04A1B2C3"),
    ],
)
def test_hid_line_to_uid(line, id_format, uid):
    assert line_to_uid(line, id_format) == uid


@pytest.mark.parametrize(
    ("line", "id_format"),
    [("", "decimal"), ("12A4", "decimal"), ("!1", "decimal"), (str(1 << 80), "decimal"),
     ("", "hex"), ("04G1", "hex"), ("?", "hex"), ("AB" * 11, "hex")],
)  # fmt: skip
def test_hid_garbage_lines_are_not_ids(line, id_format):
    with pytest.raises(ValueError):
        line_to_uid(line, id_format)


class StandInKeyboard:
    """What HidReader uses of evdev.InputDevice, fed by the test; None in the queue = unplugged."""

    def __init__(self, path: str, name: str = "ACME 125kHz RFID Reader"):
        self.path, self.name = path, name
        self.grabbed = False
        self.events: asyncio.Queue[evdev.InputEvent | None] = asyncio.Queue()

    def capabilities(self):
        return {ecodes.EV_KEY: [ecodes.KEY_ENTER, ecodes.KEY_0, ecodes.KEY_1]}

    def grab(self) -> None:
        self.grabbed = True

    def ungrab(self) -> None:
        self.grabbed = False

    def close(self) -> None:
        pass

    async def async_read_loop(self):
        while (event := await self.events.get()) is not None:
            yield event
        raise OSError(19, "No such device")

    def type(self, text: str) -> None:
        for code, value in keystrokes(text):
            self.events.put_nowait(evdev.InputEvent(0, 0, ecodes.EV_KEY, code, value))
            self.events.put_nowait(evdev.InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0))


async def test_hid_reader_grabs_the_device_drops_garbage_and_survives_unplugging(monkeypatch):
    keyboard = StandInKeyboard("/dev/input/event7")
    monkeypatch.setattr(evdev, "list_devices", lambda: ["/dev/input/event3", keyboard.path])

    def open_device(path: str) -> StandInKeyboard:
        return keyboard if path == keyboard.path else StandInKeyboard(path, "USB Mouse")

    monkeypatch.setattr(evdev, "InputDevice", open_device)
    reader = HidReader(name="rfid reader", id_format="decimal", retry=fast_retry())
    async with running(reader):
        await wait_until(lambda: reader.connected)
        assert keyboard.grabbed
        keyboard.type("12ab")  # not decimal
        keyboard.type("0010728129")
        keyboard.type("0010728129")  # the same card again within the hold-off
        assert await next_tag(reader) == "00A3B2C1"
        assert reader.frames_dropped == 1 and "not a decimal card id" in reader.last_error

        keyboard.events.put_nowait(None)  # unplugged; the next lookup by name finds it again
        await wait_until(lambda: reader.stats.reconnects == 1 and reader.connected)
        keyboard.type("0000000255")
        assert await next_tag(reader) == "000000FF"
    assert not keyboard.grabbed


def _uinput_problem() -> str | None:
    """Why a real uinput keyboard cannot be made here, or None when it can."""
    if not os.path.exists("/dev/uinput"):
        return "/dev/uinput does not exist in this sandbox"
    try:
        evdev.UInput({ecodes.EV_KEY: [ecodes.KEY_ENTER]}, name="evse-test probe").close()
    except (OSError, evdev.UInputError) as exc:
        return f"/dev/uinput is not usable: {exc}"
    return None


UINPUT_PROBLEM = _uinput_problem()


@pytest.mark.skipif(UINPUT_PROBLEM is not None, reason=str(UINPUT_PROBLEM))
async def test_hid_reader_with_a_real_uinput_keyboard():
    hex_keys = [getattr(ecodes, f"KEY_{c}") for c in "0123456789ABCDEF"]
    keys = [ecodes.KEY_ENTER, ecodes.KEY_LEFTSHIFT, *hex_keys]
    with evdev.UInput({ecodes.EV_KEY: keys}, name="evse-test RFID reader") as keyboard:
        reader = HidReader(name="evse-test rfid", id_format="hex", retry=fast_retry())
        async with running(reader):
            await wait_until(lambda: reader.connected, timeout=5)  # udev may take a moment
            for code, value in keystrokes("04A1b2C3"):
                keyboard.write(ecodes.EV_KEY, code, value)
                keyboard.syn()
            assert await next_tag(reader, timeout=5) == "04A1B2C3"


# ---- config -------------------------------------------------------------------------------------

CONFIG_PATH = Path("board-configs/station.toml")


def build(**keys):
    return build_rfid(ConfigTable(keys, "[rfid]", CONFIG_PATH), BuildContext(path=CONFIG_PATH))


def test_build_rfid_defaults_per_backend():
    pn532 = build(backend="pn532", port="/dev/ttyS0")
    assert isinstance(pn532, Pn532Reader)
    assert (pn532.link.port, pn532.link.baudrate, pn532.poll_interval_s) == ("/dev/ttyS0", 115200, 0.2)
    assert pn532.debouncer.hold_off_s == 2.0
    rdm = build(backend="rdm6300", port="/dev/ttyAMA0", hold_off_s=1.5, uid_format="dec10")
    assert isinstance(rdm, Rdm6300Reader)
    assert (rdm.link.baudrate, rdm.uid_format, rdm.debouncer.hold_off_s) == (9600, "dec10", 1.5)
    assert build(backend="rdm6300", port="/dev/ttyAMA0").uid_format == "hex5"
    hid = build(backend="hid", device="/dev/input/by-id/usb-rfid-event-kbd")
    assert isinstance(hid, HidReader) and (hid.device_path, hid.id_format) == (
        "/dev/input/by-id/usb-rfid-event-kbd",
        "decimal",
    )
    assert build(backend="hid", name="RFID", format="hex").id_format == "hex"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"backend": "mfrc522"}, '[rfid].backend: must be one of "pn532", "rdm6300", "hid", got "mfrc522"'),
        ({"backend": "pn532"}, "[rfid].port: required key is missing"),
        ({"backend": "rdm6300", "port": "/dev/ttyS0", "poll_interval_s": 1}, "[rfid].poll_interval_s: unknown key"),
        ({"backend": "hid", "device": "/dev/input/event0", "port": "/dev/ttyS0"}, "[rfid].port: unknown key"),
        ({"backend": "pn532", "port": "/dev/ttyS0", "baudrate": "fast"}, "[rfid].baudrate: expected an integer"),
        ({"backend": "pn532", "port": "/dev/ttyS0", "hold_off_s": -1}, "[rfid].hold_off_s: must be between 0 and 60 s"),
        ({"backend": "pn532", "port": "/dev/ttyS0", "poll_interval_s": 3}, "[rfid].poll_interval_s: must be shorter than hold_off_s"),
        ({"backend": "rdm6300", "port": "/dev/ttyS0", "uid_format": "dec8"}, '[rfid].uid_format: must be one of "hex5", "hex4", "dec10"'),
        ({"backend": "hid"}, "[rfid].device: required"),
        ({"backend": "hid", "device": "/dev/input/event0", "name": "RFID"}, "[rfid].name: give either device or name"),
        ({"backend": "hid", "name": "RFID", "format": "bcd"}, '[rfid].format: must be one of "decimal", "hex"'),
    ],
)  # fmt: skip
def test_build_rfid_config_errors_name_file_and_key(keys, message):
    with pytest.raises(BoardConfigError) as error:
        build(**keys)
    assert str(error.value).startswith(f"{CONFIG_PATH}: {message}")
