"""Keystrokes of a keyboard-emulating RFID reader -> lines -> UIDs. Pure: no device needed.

The reader "types" the card number and presses Enter. Which number (`format`):
  "decimal" (default; what most cheap 125 kHz and 13.56 MHz USB readers type) the UID as an unsigned
            big-endian integer, e.g. "0010728129". It is converted to hex of the smallest UID size
            that holds it, 4, 7 or 10 bytes: "0010728129" -> "00A3B2C1". Readers that type the
            bytes in reverse order give a reversed hex id; reconfigure such a reader if it can.
  "hex"     the UID already in hex (any case, ':' and '-' separators allowed), e.g. "04a1b2c3".
"""

from __future__ import annotations

import string

from evdev import ecodes

from hal.interfaces import normalise_uid

FORMATS = ("decimal", "hex")
KEY_UP, KEY_DOWN = 0, 1  # evdev KeyEvent values; 2 = auto-repeat, ignored
UID_SIZES = (4, 7, 10)  # ISO/IEC 14443 single, double and triple size UIDs
MAX_ID_LENGTH = 20  # OCPP 1.6 idTag is CiString20
MAX_LINE_LENGTH = 64  # longer lines are never a valid id anyway; bounds the buffer if Enter never comes
UNKNOWN_KEY = "?"  # keeps the line invalid, so a key we do not know cannot silently vanish from an id

SHIFT_KEYS = frozenset({ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT})
ENTER_KEYS = frozenset({ecodes.KEY_ENTER, ecodes.KEY_KPENTER})
IGNORED_KEYS = frozenset({ecodes.KEY_CAPSLOCK, ecodes.KEY_NUMLOCK, ecodes.KEY_LEFTCTRL, ecodes.KEY_RIGHTCTRL})


def _key_chars() -> dict[int, tuple[str, str]]:
    """Key code -> (character, character with Shift), US layout, the layout readers emulate."""
    chars: dict[int, tuple[str, str]] = {}
    for digit, shifted in zip("1234567890", "!@#$%^&*()", strict=True):
        chars[getattr(ecodes, f"KEY_{digit}")] = (digit, shifted)
        chars[getattr(ecodes, f"KEY_KP{digit}")] = (digit, digit)
    for letter in string.ascii_uppercase:
        chars[getattr(ecodes, f"KEY_{letter}")] = (letter.lower(), letter)
    chars[ecodes.KEY_MINUS] = ("-", "_")
    chars[ecodes.KEY_SEMICOLON] = (";", ":")
    chars[ecodes.KEY_SPACE] = (" ", " ")
    return chars


KEY_CHARS = _key_chars()


class KeyLineDecoder:
    """Feed EV_KEY events (code, value); returns the typed line when Enter is pressed, else None."""

    def __init__(self) -> None:
        self._chars: list[str] = []
        self._shift_held: set[int] = set()

    def feed(self, code: int, value: int) -> str | None:
        if code in SHIFT_KEYS:
            if value == KEY_UP:
                self._shift_held.discard(code)
            else:
                self._shift_held.add(code)
            return None
        if value != KEY_DOWN or code in IGNORED_KEYS:
            return None
        if code in ENTER_KEYS:
            line, self._chars = "".join(self._chars), []
            return line
        if len(self._chars) < MAX_LINE_LENGTH:
            plain, shifted = KEY_CHARS.get(code, (UNKNOWN_KEY, UNKNOWN_KEY))
            self._chars.append(shifted if self._shift_held else plain)
        return None


def line_to_uid(line: str, id_format: str) -> str:
    """The normalised uppercase-hex id for a typed line; ValueError when the line is not an id."""
    text = line.strip()
    if id_format == "hex":
        try:
            uid = normalise_uid(text)
        except ValueError:
            raise ValueError(f"not a hex card id: {line!r}") from None
        if len(uid) > MAX_ID_LENGTH:
            raise ValueError(f"hex card id longer than {MAX_ID_LENGTH} chars: {line!r}")
        return uid
    if id_format == "decimal":
        if not text or any(c not in string.digits for c in text):
            raise ValueError(f"not a decimal card id: {line!r}")
        number = int(text)
        for size in UID_SIZES:
            if number < 1 << (8 * size):
                return number.to_bytes(size, "big").hex().upper()
        raise ValueError(f"decimal card id larger than a 10-byte UID: {line!r}")
    raise ValueError(f"unknown format {id_format!r}")
