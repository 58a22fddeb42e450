"""The receiving side: a pynetdicom Storage SCP (C-ECHO, C-STORE) that writes each instance into the spool.

Only MR image storage classes are stored (the model segments FLAIR MR). The node's own kinds of result (SEG,
Comprehensive 3D SR, secondary capture) are accepted and dropped, so that an archive can route a whole study
again, earlier results included; any other SOP class is refused at association (its presentation context is
rejected), so a CT or a waveform never lands in the spool. With
``--allow`` only those calling AE titles are accepted; with ``--tls-cert/--tls-key`` only TLS connections.
DICOM itself has no authentication: without TLS anyone who can reach the port can send (docs/dicom-node.md).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass, field

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
)

from monaiunetseg.node.spool import Spool, SpoolFullError, clean_text

log = logging.getLogger("monaiunetseg.node")

ACCEPTED_SOP_CLASSES = (MRImageStorage, EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage)
DROPPED_SOP_CLASSES = (SegmentationStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage)
# Read by pydicom itself; compressed syntaxes would need optional plug-ins: the sender (Orthanc, a PACS) then
# converts to one of these, as DICOM negotiation intends.
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian, RLELossless]
SUCCESS, OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
MAX_PDU = 0  # no limit on what we receive in one PDU (the peer's choice)


@dataclass
class ScpOptions:
    """How the node listens: ``--ae-title``, ``--host``, ``--port``, ``--allow``, ``--tls-*``."""

    ae_title: str = "MONAIUNETSEG"
    host: str = "0.0.0.0"
    port: int = 11112
    allow: list[str] = field(default_factory=list)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # with it, clients must show a certificate signed by this CA


def tls_context(options: ScpOptions) -> ssl.SSLContext | None:
    """The server's TLS context, or None without ``--tls-cert``; a bad file is a one-line error naming it."""
    if not options.tls_cert and not options.tls_key:
        return None
    if not (options.tls_cert and options.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: give both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{options.tls_cert} / {options.tls_key}: cannot load the TLS certificate and key "
                         f"({exc})") from exc
    if options.tls_ca:
        try:
            context.load_verify_locations(options.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{options.tls_ca}: cannot load the TLS CA certificates ({exc})") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class StorageSCP:
    """The listening AE; :meth:`start` returns once it accepts associations, :meth:`stop` ends it."""

    def __init__(self, spool: Spool, options: ScpOptions, on_released=None) -> None:
        self.spool, self.options = spool, options
        self.on_released = on_released  # called after an association that stored something ended normally
        self.ae = AE(ae_title=options.ae_title)
        self.ae.maximum_pdu_size = MAX_PDU
        if options.allow:
            self.ae.require_calling_aet = list(options.allow)
        self.ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_SOP_CLASSES + DROPPED_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self._server = None
        self._studies: dict[int, set[str]] = {}  # association (id) -> study keys it stored into
        self._guard = threading.Lock()

    def start(self) -> None:
        handlers = [(evt.EVT_C_ECHO, self._echo), (evt.EVT_C_STORE, self._store),
                    (evt.EVT_RELEASED, self._released), (evt.EVT_ABORTED, self._aborted)]
        self._server = self.ae.start_server((self.options.host, self.options.port), block=False,
                                            ssl_context=tls_context(self.options), evt_handlers=handlers)

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.options.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _echo(self, event) -> int:
        return SUCCESS

    def _store(self, event) -> int:
        """Write one instance; any status but success makes the sender keep (and retry) it."""
        calling = clean_text(event.assoc.requestor.ae_title, 16)
        if event.context.abstract_syntax in DROPPED_SOP_CLASSES:
            return SUCCESS  # a result (ours or another tool's) routed with its study: nothing to segment
        try:
            ds = event.dataset
            ids = [str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
            sop_class = str(ds.get("SOPClassUID", "") or "")
        except Exception as exc:  # noqa: BLE001  an undecodable data set: refuse it, keep listening
            log.warning("refused an instance from %s: cannot decode it (%s)", calling, clean_text(exc, 200))
            return CANNOT_UNDERSTAND
        if not all(ids) or sop_class != event.context.abstract_syntax:
            log.warning("refused an instance from %s: no Study/Series/SOP Instance UID or a SOP class that is not "
                        "the negotiated one", calling)
            return NOT_MATCHING
        try:
            self.spool.store(*ids, event.encoded_dataset(), ds.get("PatientID", ""))
        except SpoolFullError as exc:
            log.error("refused an instance from %s: %s", calling, exc)
            return OUT_OF_RESOURCES
        except OSError as exc:
            log.error("refused an instance from %s: cannot write it to the spool (%s)", calling, exc)
            return OUT_OF_RESOURCES
        with self._guard:
            self._studies.setdefault(id(event.assoc), set()).add(self.spool.study_key(ids[0]))
        return SUCCESS

    def _released(self, event) -> None:
        with self._guard:
            keys = self._studies.pop(id(event.assoc), set())
        if keys:
            self.spool.released(keys)
            if self.on_released:
                self.on_released()

    def _aborted(self, event) -> None:
        with self._guard:
            self._studies.pop(id(event.assoc), None)
