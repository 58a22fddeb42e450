"""``monaiunetseg listen``: argparse wiring of the DICOM node (``scp`` + ``process``), and ``listen --status``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from monaiunetseg.batch.cli import add_model_options, check_model_options
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.node.sender import parse_destination
from monaiunetseg.node.spool import DONE, SENDING, escape_controls, load_states

log = logging.getLogger("monaiunetseg.node")
STATUS_COLUMNS = ("study", "patient", "received", "segmented", "sent", "failed", "state")


def status_rows(spool: str | Path) -> list[dict[str, str]]:
    """One row per study of the spool: instances received, series segmented / sent / failed, and its state."""
    rows = []
    now = time.time()
    for key, s in load_states(spool).items():
        state = s.phase
        if s.phase == SENDING and s.next_try:
            wait = max(0.0, min(s.next_try.values()) - now)
            errors = "; ".join(s.last_error.values())
            state = f"sending (next try in {wait:.0f} s: {errors})" if errors else "sending"
        elif s.phase == DONE and (s.error or any(r.status == "failed" for r in s.results)):
            state = "done with failures: " + (s.error or "; ".join(r.error for r in s.results if r.status == "failed"))
        rows.append({"study": escape_controls(s.study_uid or key), "patient": s.patient, "received": str(s.received),
                     "segmented": str(sum(r.status == "ok" for r in s.results)),
                     "sent": str(sum(bool(r.files) and set(s.destinations) <= set(r.sent_to) for r in s.results)),
                     "failed": str(sum(r.status == "failed" for r in s.results) + bool(s.error)),
                     "state": escape_controls(state)})  # DICOM text in errors: one study, one line
    return rows


def print_status(spool: Path) -> int:
    if not (spool / "studies").is_dir():
        raise FileNotFoundError(f"{spool}: no node spool here (no studies/ folder)")
    rows = status_rows(spool)
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in STATUS_COLUMNS[:-1]}
    print("  ".join(c.ljust(widths[c]) for c in STATUS_COLUMNS[:-1]) + "  state")
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in STATUS_COLUMNS[:-1]) + "  " + r["state"])
    return 0


class _LineFormatter(logging.Formatter):
    """One event, one line: DICOM text inside a message (descriptions, errors) keeps no control characters."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "msg": escape_controls(record.getMessage()), "args": None})
        return super().format(record)  # a traceback (never expected) keeps its lines


def _listen(args: argparse.Namespace) -> int:
    if args.status:
        return print_status(args.spool)
    if not args.send_to:
        raise ValueError("give at least one --send-to AET@HOST:PORT (where the SEG and SR go)")
    from monaiunetseg.node.process import NodeOptions, Worker
    from monaiunetseg.node.scp import ScpOptions, StorageSCP, tls_context
    from monaiunetseg.node.spool import Spool

    destinations = [parse_destination(d) for d in args.send_to]
    scp_options = ScpOptions(ae_title=args.ae_title, host=args.host, port=args.port, allow=args.allow or [],
                             tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca)
    tls_context(scp_options)  # a bad certificate: exit 2 before anything starts
    check_model_options(args)
    batch = BatchOptions(device=args.device, dicom_seg=True, overlay=args.send_overlay, bundle=args.bundle,
                         weights=args.weights, model=args.model, progress=False, measure=True, wait=True)
    options = NodeOptions(destinations=destinations, ae_title=args.ae_title, series_timeout=args.series_timeout,
                          complete_on_release=args.complete_on_release, retry_max=args.retry_max,
                          send_overlay=args.send_overlay, batch=batch)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter("%(asctime)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per instance is noise; refusals stay
    try:
        spool = Spool(args.spool, int(args.spool_limit * 1e9) if args.spool_limit else None)
    except OSError as exc:
        raise RuntimeError(f"{args.spool}: cannot be used as the spool ({exc.strerror or exc})") from exc
    worker = Worker(spool, options)
    scp = StorageSCP(spool, scp_options, on_released=worker.wake.set)
    try:  # before the model loads: a port in use is said at once; instances wait in the spool for the model
        scp.start()
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from exc
    try:
        from monaiunetseg.model.predictor import Segmenter

        worker.segmenter = Segmenter(args.bundle, device=args.device, weights=args.weights, model=args.model)
    except BaseException:
        scp.stop()
        raise
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stop.set(), worker.stop()))
    thread = threading.Thread(target=worker.run, name="monaiunetseg-worker", daemon=True)
    thread.start()
    log.info("listening as %s on %s:%d%s; spool %s; results to %s", args.ae_title, args.host, scp.port,
             " (TLS)" if args.tls_cert else "", spool.root, ", ".join(str(d) for d in destinations))
    try:
        while not stop.wait(1.0):
            if not thread.is_alive():
                raise RuntimeError("the worker thread stopped; see the lines above")
    finally:
        scp.stop()
        worker.stop()
        thread.join(timeout=60)
        log.info("stopped; unfinished studies stay in %s and are resumed by the next start", spool.root)
    return 0


def add_listen_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``listen`` on the ``monaiunetseg`` subcommand parsers (called by ``cli.build_parser``)."""
    p = subparsers.add_parser(
        "listen",
        help="run a DICOM node: receive series (C-STORE), segment each study's FLAIR, send SEG + SR back",
        description="A DICOM Storage SCP (research use only, not for diagnosis). Received instances are written "
                    "to the spool; a study is complete when nothing arrived for --series-timeout seconds; its FLAIR "
                    "series is segmented as 'segment --dicom-seg --measure' would, and the DICOM SEG and a TID 1500 "
                    "measurement report (SR) are stored at every --send-to destination (retried until they are). "
                    "DICOM has no authentication: run it on a trusted network, with --allow, or behind TLS. "
                    "Exit code 2 for a command error; the node otherwise runs until stopped (SIGTERM, Ctrl-C).")
    p.add_argument("--spool", type=Path, required=True, metavar="DIR",
                   help="where received instances and results are kept (a restarted node resumes from it)")
    p.add_argument("--status", action="store_true",
                   help="print received / segmented / sent / failed per study of --spool and exit")
    p.add_argument("--ae-title", default="MONAIUNETSEG", help="this node's AE title (default MONAIUNETSEG)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all; 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112; 0: any free port)")
    p.add_argument("--send-to", action="append", metavar="AET@HOST:PORT",
                   help="where to store the results (repeatable), e.g. ORTHANC@127.0.0.1:4242")
    p.add_argument("--series-timeout", type=float, default=30.0, metavar="S",
                   help="a study is complete when no instance arrived for S seconds (default 30)")
    p.add_argument("--complete-on-release", action="store_true",
                   help="a study is complete as soon as the association that brought it is released (for senders "
                        "that send whole studies or series in one association, as Orthanc's store does)")
    p.add_argument("--allow", action="append", metavar="AET",
                   help="accept associations only from this calling AE title (repeatable; default: any)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve DICOM over TLS with this certificate (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--tls-ca", metavar="PEM", help="require client certificates signed by this CA (with TLS)")
    p.add_argument("--send-overlay", action="store_true",
                   help="also send the overlay picture (measured slice, outline, diameters) as a secondary capture")
    p.add_argument("--retry-max", type=float, default=600.0, metavar="S",
                   help="longest wait between tries of a destination that is down (default 600; 5, 10, 20, ... s)")
    p.add_argument("--spool-limit", type=float, default=50.0, metavar="GB",
                   help="refuse new instances (status A700, out of resources) while the spool holds this much "
                        "(default 50; 0: no limit)")
    add_model_options(p)
    p.set_defaults(func=_listen)
    return p
