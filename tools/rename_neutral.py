#!/usr/bin/env python3
"""Rename the core's former OCPP 1.6 words to its protocol-neutral ones in the files that use the core.

    python tools/rename_neutral.py [--all-names] [--check] PATH...

The core (agent/core/) speaks a neutral vocabulary; its consumers (control loop, channel, station, its
stores, CLI, tests) follow with this script, so that it can be run again on files that change meanwhile
(for example the modules split off agent/station/station.py). It is idempotent and changes only Python
name tokens (and the status words compared with `.status.value`): other string literals (wire payloads,
SQL, JSON keys) and comments are left as they are.

What it renames:
* IdTagPresented -> TokenPresented; IdTagInfo -> TokenInfo (not `datatypes.IdTagInfo`, the ocpp library's);
* the commands StartTransaction -> BeginTransaction, StopTransaction -> EndTransaction, when bare or
  qualified by the core's module (`ctl.`, `controller.`), never `call.StartTransaction` (the wire message);
* ConnectorStatus.PREPARING -> .OCCUPIED, ConnectorStatus.FINISHING -> .FINISHED, and the 1.6 word in
  `<...>.status.value == "Preparing"` (or !=) -> the neutral value ("occupied");
* the core's id names: route_id_tag, present_id_tag, transaction_id_tag, transaction_parent_id_tag,
  authorized_id_tag -> *_id_token; the attributes `.id_tag` / `.parent_id_tag` -> `.id_token` /
  `.parent_id_token` except on a journal or CSMS record (`tx.`, `record.`, `r.`); keyword arguments `id_tag=` /
  `parent_id_tag=` in calls of the core's classes and functions;
* with --all-names also every other `id_tag` / `parent_id_tag` name (locals, parameters, fields), except
  keyword arguments of the ocpp library's `call.*`, `call_result.*` and `datatypes.*` (wire objects). Use it
  for files that are the core's consumers through and through (the station, its reservations, the
  control process), not for tests that also drive the CSMS.

--check: change nothing, list the files that would change (exit status 1 if any). Otherwise the changed
files get their imports sorted again (`ruff check --select I --fix`, when ruff is installed): a renamed
name can move in its import list.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

SIMPLE = {"IdTagPresented": "TokenPresented"}
COMMANDS = {"StartTransaction": "BeginTransaction", "StopTransaction": "EndTransaction"}
CORE_MODULE_ALIASES = {"ctl", "controller"}
STATUS_MEMBERS = {"PREPARING": "OCCUPIED", "FINISHING": "FINISHED"}
UNIQUE_ID_NAMES = {
    name: name.replace("id_tag", "id_token")
    for name in ("route_id_tag", "present_id_tag", "transaction_id_tag", "transaction_parent_id_tag",
                 "authorized_id_tag", "_on_id_tag")
}
ID_NAMES = {"id_tag": "id_token", "parent_id_tag": "parent_id_token"}
# `<...>.status.value == "Preparing"`: a connector status compared as text
STATUS_VALUES = {
    "Available": "available", "Preparing": "occupied", "Charging": "charging", "SuspendedEV": "suspended_ev",
    "SuspendedEVSE": "suspended_evse", "Finishing": "finished", "Reserved": "reserved",
    "Unavailable": "unavailable", "Faulted": "faulted",
}
RECORD_RECEIVERS = {"tx", "record", "r"}  # journal / CSMS transaction records keep their own field names
WIRE_MODULES = {"call", "call_result", "datatypes"}  # the ocpp library's wire objects
CORE_CALLABLES = {
    "TokenPresented", "IdTagPresented", "AuthorizationResult", "RemoteStart", "ResumeTransaction",
    "StopRequested", "ReservationMade", "RequestAuthorization", "BeginTransaction", "EndTransaction",
    "StartTransaction", "StopTransaction", "TokenInfo", "IdTagInfo", "Decision", "ConnectorView",
    "can_accept_remote_start", "admits", "decide", "local_record", "valid_id_token",
}


def rename_source(source: str, all_names: bool = False) -> str:
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    significant = [t for t in tokens if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
                                                        tokenize.INDENT, tokenize.DEDENT)]
    replacements: list[tuple[tokenize.TokenInfo, str]] = []
    calls: list[tuple[str | None, str | None]] = []  # per open bracket: (callee, its qualifier)
    for i, tok in enumerate(significant):
        prev1 = significant[i - 1].string if i >= 1 else ""
        prev2 = significant[i - 2].string if i >= 2 else ""
        nxt = significant[i + 1].string if i + 1 < len(significant) else ""
        if tok.type == tokenize.OP:
            if tok.string == "(":
                callee = prev1 if i >= 1 and significant[i - 1].type == tokenize.NAME else None
                dotted = callee is not None and i >= 3 and prev2 == "."
                calls.append((callee, significant[i - 3].string if dotted else None))
            elif tok.string in "[{":
                calls.append((None, None))
            elif tok.string in ")]}" and calls:
                calls.pop()
            continue
        if tok.type == tokenize.STRING:
            word = tok.string[1:-1] if tok.string[:1] in "\"'" and tok.string[-1:] == tok.string[:1] else None
            compared = [t.string for t in significant[max(0, i - 4):i]] in (
                ["status", ".", "value", "=="], ["status", ".", "value", "!="])
            if compared and word in STATUS_VALUES:
                replacements.append((tok, tok.string[0] + STATUS_VALUES[word] + tok.string[-1]))
            continue
        if tok.type != tokenize.NAME:
            continue
        name = tok.string
        attribute = prev1 == "."
        new: str | None = None
        if name in SIMPLE:
            new = SIMPLE[name]
        elif name == "IdTagInfo" and not (attribute and prev2 == "datatypes"):
            new = "TokenInfo"
        elif name in COMMANDS and (not attribute or prev2 in CORE_MODULE_ALIASES):
            new = COMMANDS[name]
        elif name in STATUS_MEMBERS and attribute and prev2 == "ConnectorStatus":
            new = STATUS_MEMBERS[name]
        elif name in UNIQUE_ID_NAMES:
            new = UNIQUE_ID_NAMES[name]
        elif name in ID_NAMES:
            callee, qualifier = calls[-1] if calls else (None, None)
            if attribute:
                if prev2 not in RECORD_RECEIVERS:
                    new = ID_NAMES[name]
            elif nxt == "=" and callee is not None:  # a keyword argument (or a default in a def: see below)
                wire = qualifier in WIRE_MODULES
                core = callee in CORE_CALLABLES and qualifier not in WIRE_MODULES
                if core or (all_names and not wire):
                    new = ID_NAMES[name]
            elif all_names:
                new = ID_NAMES[name]
        if new is not None and new != name:
            replacements.append((tok, new))
    if not replacements:
        return source
    lines = source.splitlines(keepends=True)
    for tok, new in sorted(replacements, key=lambda r: r[0].start, reverse=True):
        (row, col), (end_row, end_col) = tok.start, tok.end
        assert row == end_row
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[end_col:]
    return "".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all-names", action="store_true", help="rename every id_tag / parent_id_tag name too")
    parser.add_argument("--check", action="store_true", help="only list the files that would change")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    changed = []
    for path in args.paths:
        source = path.read_text()
        result = rename_source(source, all_names=args.all_names)
        if result != source:
            changed.append(path)
            if not args.check:
                path.write_text(result)
    for path in changed:
        print(("would change " if args.check else "changed ") + str(path))
    ruff = shutil.which("ruff")
    if changed and not args.check and ruff is not None:
        subprocess.run([ruff, "check", "--quiet", "--select", "I", "--fix", *map(str, changed)], check=False)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
