"""Sending results: C-STORE of a study's SEG, SR (and secondary capture) to each destination, with back-off.

A destination that is down, refuses the association or fails a store keeps the files in the spool; the next try
comes after a doubling wait (``--retry-max`` caps it). All files of one try go in one association and count as sent
only when every store succeeded, so a destination never holds a SEG without its report for long: the next try
sends the whole set again (the same SOP Instance UIDs: an archive stores them once).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

log = logging.getLogger("monaiunetseg.node")

FIRST_RETRY_S = 5.0
SUCCESS_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)  # success, and the storage warnings (coerced, elements discarded)
_DESTINATION = re.compile(r"^(?P<aet>[^@\\]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """``AET@HOST:PORT`` of ``--send-to``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``ORTHANC@pacs.local:4242`` -> Destination; a malformed one is a one-line error."""
    match = _DESTINATION.match(text.strip())
    port = int(match.group("port")) if match else 0
    if not match or not 0 < port < 65536 or match.group("aet").strip() != match.group("aet"):
        raise ValueError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242 (AE title up to "
                         "16 characters without spaces at either end, port 1-65535)")
    return Destination(match.group("aet"), match.group("host").strip("[]"), port)


def retry_delay(attempts: int, retry_max: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones in a row: 5, 10, 20, ... up to ``retry_max``."""
    return min(retry_max, FIRST_RETRY_S * 2 ** max(0, attempts - 1))


class SendError(RuntimeError):
    """A try that did not store every file; the message names the destination and what went wrong."""


def send_files(files: list[Path], destination: Destination, calling_ae: str, timeout: float = 30.0) -> None:
    """Store ``files`` (DICOM files) at ``destination`` in one association; raises :class:`SendError`."""
    if not files:
        return
    classes = []
    for path in files:
        sop_class = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID
        if sop_class not in classes:
            classes.append(sop_class)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        raise SendError(f"{destination}: association {why}")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code not in SUCCESS_STATUSES:
                what = "no response (timeout or connection lost)" if code == -1 else f"status 0x{code:04X}"
                raise SendError(f"{destination}: C-STORE of {path.name} failed: {what}")
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
