"""Benchmarks of issues 6 and 9: `python -m bench <figure> [--size tiny|full]` or `python -m bench all`.

One module per figure; each prints a block with its figures, the baseline/target and the machine it ran
on (format: bench.common). Figures are reported, never asserted: the exit code is 0 either way.
"""

FIGURES = {
    "reaction": "pilot event -> contactor command in the control process (4 connectors, OCPP load)",
    "isolation": "C->B -> contactor open while the agent process is attacked (journal, CSMS, GC, downloads)",
    "c_to_b": "end-to-end C->B -> contactor open, agent + control process on the sim board in real time",
    "idle": "idle RSS and CPU of the agent and control processes and their sum (1 connector, connected)",
    "boot": "process start -> first BootNotification frame at the CSMS",
    "journal": "journal append rate (write-back MeterValues, fsynced Start/Stop)",
    "replay": "replay of 10,000 queued messages vs a bare `ocpp` call loop",
    "flash": "bytes written per charging hour at 10 s meter sampling",
}
