"""Rewrite a station component's module-level logger calls into its per-station logger (agent.logs.StationLogs).

Many stations share one process (agent.fleet), so a component a station owns logs through the logger the
station gave it (`self.log`, tagged with the station id and redacted with that station's secrets), not
through the module's `log`. This script makes that change mechanically: inside the methods of the classes
listed in RULES, a use of the module variable (`log.info(...)`) becomes the attribute (`self.log.info(...)`).
Module-level functions keep the module logger. Re-runnable: what is already rewritten is not matched again,
so it can be run again after a merge or after code moved between modules (`python tools/station_logger.py`;
`--check` only lists what it would change and exits 1 if anything).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LOGGING_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log", "isEnabledFor"}

# (file, class, module variable, what it becomes in that class's methods)
RULES: list[tuple[str, str, str, str]] = [
    ("agent/station/station.py", "Station", "log", "self.log"),
    ("agent/station/control_channel.py", "ControlChannel", "log", "self.log"),
    ("agent/station/recorder.py", "TransactionRecorder", "log", "self.log"),
    ("agent/station/authorizer.py", "Authorizer", "log", "self.log"),
    ("agent/station/meter_sampling.py", "MeterSampling", "log", "self.log"),
    ("agent/station/csms_facade.py", "StationAvailability", "log", "self.log"),
    ("agent/station/csms_facade.py", "CsmsFacade", "log", "self.log"),
    ("agent/station/reservations.py", "Reservations", "log", "self.log"),
    ("agent/station/charging_limits.py", "ChargingLimits", "log", "self.log"),
    ("agent/station/transfer_operations.py", "TransferOperations", "log", "self.log"),
    ("agent/station/transfer_operations.py", "TransferOperations", "security_log", "self.security_log"),
    ("agent/station/diagnostics.py", "DiagnosticsUploads", "log", "self.log"),
    ("agent/station/firmware_install.py", "FirmwareInstall", "log", "self.log"),
    ("agent/station/firmware.py", "FirmwareManager", "log", "self.log"),
    ("agent/station/firmware.py", "FirmwareManager", "security_log", "self.security_log"),
    ("agent/ocpp/security.py", "SecurityManager", "log", "self.logger"),  # self.log: its security event log
    ("agent/ocpp/v16/client.py", "OcppClient", "log", "self.log"),
    ("agent/ocpp/v16/client.py", "_ChargePoint", "log", "self._client.log"),
    ("agent/ocpp/v16/client.py", "_LoggedConnection", "frame_log", "self.frame_log"),
    ("agent/ocpp/v16/security.py", "SecurityHandlers", "log", "self._client.security_log"),
]


def _uses(tree: ast.Module, class_name: str, variable: str) -> list[tuple[int, int]]:
    """(line, column) of every read of `variable` inside the methods (with `self`) of `class_name`."""
    return [(node.lineno, node.col_offset) for node in _names(tree, class_name, variable)]


def _continuations(tree: ast.Module, class_name: str, variable: str) -> list[tuple[int, int, int]]:
    """(first line, last line, indent) of the continuation lines of calls `variable.method(...)` whose
    arguments line up under the opening parenthesis: they move right with the rewritten name."""
    names = {id(node) for node in _names(tree, class_name, variable)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and id(node.func.value) in names and node.end_lineno and node.end_lineno > node.lineno):
            found.append((node.lineno + 1, node.end_lineno, node.func.end_col_offset + 1))
    return found


def _names(tree: ast.Module, class_name: str, variable: str) -> list[ast.Name]:
    found = []
    for cls in ast.walk(tree):
        if not (isinstance(cls, ast.ClassDef) and cls.name == class_name):
            continue
        for method in cls.body:
            if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not method.args.args or method.args.args[0].arg != "self":
                continue
            for node in ast.walk(method):  # log.info, log.isEnabledFor, ...: not log.name or `log` alone
                if (isinstance(node, ast.Attribute) and node.attr in LOGGING_METHODS
                        and isinstance(node.value, ast.Name) and node.value.id == variable):
                    found.append(node.value)
    return found


def rewrite(path: Path, rules: list[tuple[str, str, str]]) -> int:
    """Apply (class, variable, replacement) rules to one file; returns the number of uses rewritten."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    edits = []
    tree = ast.parse(text)
    shifts: dict[int, tuple[int, int]] = {}  # line -> (its indent now, how far right it moves)
    for class_name, variable, replacement in rules:
        edits += [(line, column, variable, replacement) for line, column in _uses(tree, class_name, variable)]
        for first, last, indent in _continuations(tree, class_name, variable):
            for line in range(first, last + 1):
                shifts[line] = (indent, len(replacement) - len(variable))
    for line, (indent, delta) in shifts.items():
        source = lines[line - 1]
        if len(source) - len(source.lstrip(" ")) == indent and source.strip():
            lines[line - 1] = " " * delta + source
    # from the end, so earlier offsets stay valid (two uses on one line: the right one first)
    for line, column, variable, replacement in sorted(edits, reverse=True):
        source = lines[line - 1]
        assert source[column:column + len(variable)] == variable, (path, line, source)
        lines[line - 1] = source[:column] + replacement + source[column + len(variable):]
    if edits:
        path.write_text("".join(lines))
    return len(edits)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    by_file: dict[str, list[tuple[str, str, str]]] = {}
    for file, class_name, variable, replacement in RULES:
        by_file.setdefault(file, []).append((class_name, variable, replacement))
    pending = 0
    for file, rules in by_file.items():
        path = REPO / file
        if not path.exists():
            print(f"{file}: missing (moved?): add its new place to RULES", file=sys.stderr)
            continue
        if check:
            tree = ast.parse(path.read_text())
            count = sum(len(_uses(tree, c, v)) for c, v, _ in rules)
        else:
            count = rewrite(path, rules)
        if count:
            print(f"{file}: {count} use(s) {'to rewrite' if check else 'rewritten'}")
        pending += count
    return 1 if check and pending else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
