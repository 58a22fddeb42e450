"""``monaiunetseg listen`` end to end against a real Orthanc (Debian's ``orthanc``): Orthanc sends the sample's
FLAIR series to the node (``/modalities/node/store``), the node segments it and stores a DICOM SEG and a TID 1500
SR back into the same study. Also: kill -9 mid-series and restart, Orthanc down when the results are ready, the
same series sent twice, refused senders and SOP classes over TLS, names from hostile tags, a full spool.

The node runs as its own process (``python -m monaiunetseg.cli listen``) with the ``fast`` model set, as a user
starts it; every sender is real (Orthanc, or pynetdicom as a storage SCU).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.report import OK
from monaiunetseg.batch.run import run_batch
from monaiunetseg.node import sr
from monaiunetseg.node.spool import load_states

from conftest import REPO, SAMPLE_FLAIR
from dicom_factory import write_series
from orthanc import NODE_AET, Orthanc, free_port, orthanc_binary, wait_for

pytestmark = pytest.mark.skipif(orthanc_binary() is None,
                                reason="Orthanc not installed (apt-get install orthanc; .ci/run does)")
MODEL = "fast"
VOLUME_CODE = "118565006"  # SNOMED CT "Volume"


class Node:
    """``monaiunetseg listen`` as a child process; its log in ``log``."""

    def __init__(self, spool: Path, port: int, send_to: list[str], *extra: str, log: Path) -> None:
        self.spool, self.port, self.log = spool, port, log
        self.args = [sys.executable, "-m", "monaiunetseg.cli", "listen", "--spool", str(spool), "--host", "127.0.0.1",
                     "--port", str(port), "--model", MODEL, "--device", "cpu",
                     *(a for d in send_to for a in ("--send-to", d)), *extra]
        self.process: subprocess.Popen | None = None

    def start(self) -> Node:
        env = {**os.environ, "PYTHONPATH": str(REPO / "MONAIUNetSeg")}  # this worktree's core
        begin = len(self.text())
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env=env)
        wait_for(lambda: "listening as" in self.text()[begin:] or self.process.poll() is not None, 120, "node start")
        assert self.process.poll() is None, self.text()
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def state(self) -> dict:
        states = load_states(self.spool)
        return {s.study_uid: s for s in states.values()}


@pytest.fixture(scope="module")
def sample_series(tmp_path_factory) -> dict:
    """The sample FLAIR as a real DICOM series, plus a T1-named series of the same study (to be left alone)."""
    image = nib.load(SAMPLE_FLAIR)
    volume = np.asarray(image.dataobj).astype(np.float64)
    root = tmp_path_factory.mktemp("series")
    flair = write_series(volume, image.affine, root / "flair", description="AX FLAIR", series_number=5)
    t1 = write_series(volume[:, :, :4], image.affine, root / "t1", description="AX T1", series_number=3,
                      study_uid=flair["study_uid"], seed=3)
    return {**flair, "folder": root / "flair", "t1_paths": t1["paths"]}


@pytest.fixture(scope="module")
def reference(sample_series, tmp_path_factory):
    """``segment --dicom-seg --measure`` on the same series: what the node's results must equal."""
    out = tmp_path_factory.mktemp("reference")
    batch = run_batch([sample_series["folder"]], out, BatchOptions(dicom_seg=True, measure=True, model=MODEL,
                                                                  progress=False, device="cpu"))
    (result,) = batch.results
    assert result.status == OK and result.dicom_seg, result
    return result


@pytest.fixture()
def orthanc(tmp_path):
    node_port = free_port()
    server = Orthanc(tmp_path / "orthanc", node_port).start()
    yield server
    server.stop()


def seg_frames(ds: pydicom.Dataset) -> dict[str, np.ndarray]:
    """A SEG's frames by the source instance each lies on."""
    pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    return {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID: pixels[i]
            for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence)}


def content_items(ds: pydicom.Dataset):
    """Every content item of an SR tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def num_items(ds: pydicom.Dataset) -> dict[str, float]:
    """Every NUM content item of an SR tree, by concept code value."""
    return {item.ConceptNameCodeSequence[0].CodeValue: float(item.MeasuredValueSequence[0].NumericValue)
            for item in content_items(ds) if item.ValueType == "NUM"}


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines (warnings allowed); the test skips when dicom3tools is not installed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools; .ci/run does)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def fetch(orthanc: Orthanc, study: str, modality: str, folder: Path) -> list[pydicom.Dataset]:
    found = []
    for i, instance in enumerate(orthanc.instances_of_modality(study, modality)):
        path = folder / f"{modality}{i}.dcm"
        path.write_bytes(orthanc.file(instance))
        found.append(pydicom.dcmread(path))
    return found


def test_orthanc_receives_seg_and_sr_equal_to_segment_and_a_duplicate_is_not_redone(orthanc, sample_series,
                                                                                    reference, tmp_path):
    study = orthanc.upload(sample_series["paths"] + sample_series["t1_paths"])
    node = Node(tmp_path / "spool", orthanc.node_port, [orthanc.destination], "--series-timeout", "2",
                "--send-overlay", log=tmp_path / "node.log").start()
    try:
        assert orthanc.send_to_node([study])["InstancesCount"] == 38 + 4
        wait_for(lambda: orthanc.instances_of_modality(study, "SEG") and orthanc.instances_of_modality(study, "SR")
                 and orthanc.instances_of_modality(study, "OT"), 120, "SEG, SR and overlay in Orthanc")
        (seg,), (report,), (overlay,) = (fetch(orthanc, study, m, tmp_path) for m in ("SEG", "SR", "OT"))
        uid = sample_series["study_uid"]
        assert seg.StudyInstanceUID == report.StudyInstanceUID == overlay.StudyInstanceUID == uid
        # the SEG is segment's, voxel for voxel, on the source instances it references
        expected = seg_frames(pydicom.dcmread(reference.dicom_seg))
        got = seg_frames(seg)
        assert set(got) == set(expected) == {str(pydicom.dcmread(p).SOPInstanceUID) for p in sample_series["paths"]}
        assert all(np.array_equal(got[k], expected[k]) for k in expected)
        assert sum(int(f.sum()) for f in got.values()) > 1000  # a real finding, not two empty masks
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sample_series["series_uid"]
        flagged = reference.review == "yes"
        assert seg.SeriesDescription.startswith(sr.REVIEW) == flagged
        # the SR: the report's volume and RANO diameters, referencing the SEG and the source series
        numbers = num_items(report)
        assert numbers[VOLUME_CODE] == pytest.approx(reference.volume_ml, rel=1e-9)
        assert numbers[sr.LONG_AXIS.value] == pytest.approx(reference.axial_longest_mm, rel=1e-9)
        assert numbers[sr.PERPENDICULAR_AXIS.value] == pytest.approx(reference.axial_perpendicular_mm, rel=1e-9)
        assert numbers[sr.PRODUCT.value] == pytest.approx(reference.bidimensional_mm2, rel=1e-9)
        assert numbers[sr.CONFIDENCE.value] == pytest.approx(reference.confidence, rel=1e-9)
        evidence = {s.SeriesInstanceUID for item in report.CurrentRequestedProcedureEvidenceSequence
                    for s in item.ReferencedSeriesSequence}
        assert {sample_series["series_uid"], seg.SeriesInstanceUID} <= evidence
        for ds in (seg, report, overlay):  # warnings allowed: the private coding scheme, the SC's empty Laterality
            assert dciodvfy_errors(Path(ds.filename)) == [], ds.Modality
        # the T1 series was left alone, with the reason in the study's report
        rows = json.loads(next((tmp_path / "spool").glob("studies/*/out/report.json")).read_text())["rows"]
        assert any("not a FLAIR series" in r["error"] for r in rows if r["status"] == "skipped")
        state = wait_for(lambda: node.state()[uid].phase == "done" and node.state()[uid], 30, "study done")
        assert state.segmentations == 1 and state.received == 42
        assert not list((tmp_path / "spool").glob("studies/*/dicom"))  # sent: the instances are gone

        # the same study sent again: received, recognised, not segmented again and not sent again
        orthanc.send_to_node([study])
        state = wait_for(lambda: (s := node.state()[uid]).received == 84 and s.phase == "done" and s, 60,
                         "duplicate processed")
        assert state.segmentations == 1
        assert "earlier result kept" in node.text()
        assert len(orthanc.instances_of_modality(study, "SEG")) == len(orthanc.instances_of_modality(study, "SR")) == 1
    finally:
        node.stop()
    status = subprocess.run([sys.executable, "-m", "monaiunetseg.cli", "listen", "--spool", str(tmp_path / "spool"),
                             "--status"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "MONAIUNetSeg")})
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1].split()[1:6] == ["LGG-TEST-01", "84", "1", "1", "0"]


def test_review_is_said_in_the_seg_and_the_sr(reference, sample_series, tmp_path):
    """A flagged result: REVIEW in the SEG's Series Description and segment label, the flag and the reasons in the
    SR; both still valid DICOM."""
    flagged = type(reference)(**{**reference.__dict__, "review": "yes",
                                 "review_reasons": "low confidence: uncertain outline (expected Dice 0.62)"})
    seg = pydicom.dcmread(sr.mark_review(reference.dicom_seg, tmp_path / "seg.dcm", flagged))
    assert seg.SeriesDescription.startswith("REVIEW - ") and seg.SegmentSequence[0].SegmentLabel.startswith("REVIEW")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sample_series["paths"]]
    report = pydicom.dcmread(sr.write_report_sr(tmp_path / "seg.dcm", sources, flagged, tmp_path / "sr.dcm"))
    assert report.SeriesDescription.startswith("REVIEW - ")
    items = list(content_items(report))
    codes = {i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
             for i in items if i.ValueType == "CODE"}
    assert codes["Review recommended"] == "Yes"
    comments = [i.TextValue for i in items
                if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments == [flagged.review_reasons]
    for path in (tmp_path / "seg.dcm", tmp_path / "sr.dcm"):
        assert dciodvfy_errors(path) == [], path.name


def test_node_killed_mid_series_restarts_and_finishes(orthanc, sample_series, reference, tmp_path):
    """kill -9 while an association is half way through the series; the restarted node keeps what was stored and
    finishes it (a failed case: half a series is no volume), takes the rest when Orthanc sends the study again, and
    sends the result once."""
    study = orthanc.upload(sample_series["paths"])
    spool = tmp_path / "spool"
    node = Node(spool, orthanc.node_port, [orthanc.destination], "--series-timeout", "3", log=tmp_path / "node.log")
    node.start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", orthanc.node_port, ae_title=NODE_AET)
    assert assoc.is_established
    for path in sample_series["paths"][:15]:
        assert assoc.send_c_store(path).Status == 0
    node.kill()  # mid-series, association still open
    assoc.abort()
    stored = list(spool.glob("studies/*/dicom/*/*.dcm"))
    assert len(stored) == 15
    node.start()
    uid = sample_series["study_uid"]
    try:
        # what was received is finished: 15 scattered slices are no volume, a FAILED line names the series
        state = wait_for(lambda: (s := node.state().get(uid)) and s.phase == "done" and s, 60, "half series processed")
        assert [r.status for r in state.results] == ["failed"] and "slice(s) missing" in state.results[0].error
        assert f"FAILED {state.results[0].error}" in node.text()
        assert not orthanc.instances_of_modality(study, "SEG")
        assert len(list(spool.glob("studies/*/dicom/*/*.dcm"))) == 15
        # the sender sends the study again: completed, segmented, sent
        assert orthanc.send_to_node([study])["InstancesCount"] == 38
        wait_for(lambda: orthanc.instances_of_modality(study, "SEG") and orthanc.instances_of_modality(study, "SR"),
                 120, "SEG and SR after the restart")
        (seg,) = fetch(orthanc, study, "SEG", tmp_path)
        expected = seg_frames(pydicom.dcmread(reference.dicom_seg))
        assert all(np.array_equal(seg_frames(seg)[k], v) for k, v in expected.items())
        state = wait_for(lambda: (s := node.state()[uid]).phase == "done" and s.results[0].sent_to and s, 30, "done")
        assert state.segmentations == 1 and state.received == 15 + 38 and state.results[0].status == "ok"
        assert not [p for p in spool.rglob("*") if ".part" in p.name]
    finally:
        node.stop()


def test_results_wait_for_a_destination_that_is_down(orthanc, sample_series, tmp_path):
    """Orthanc stops before the results are ready: the node retries with back-off and keeps them in the spool;
    killed (-9) and restarted meanwhile, it stores them once Orthanc is back on the same port."""
    study = orthanc.upload(sample_series["paths"])
    node = Node(tmp_path / "spool", orthanc.node_port, [orthanc.destination], "--series-timeout", "5",
                "--retry-max", "1", log=tmp_path / "node.log").start()
    uid = sample_series["study_uid"]
    try:
        orthanc.send_to_node([study])
        orthanc.stop()
        state = wait_for(lambda: (s := node.state().get(uid)) and s.attempts.get(orthanc.destination, 0) >= 2 and s,
                         120, "two failed tries")
        assert state.phase == "sending" and state.results[0].files and not state.results[0].sent_to
        assert all((tmp_path / "spool" / "studies" / f"study-{_digest(uid)}" / "send" / f).is_file()
                   for f in state.results[0].files)
        assert "failed (try 1)" in node.text()
        node.kill()  # results made, not sent: a restarted node sends them
        node.start()
        orthanc.start()
        wait_for(lambda: orthanc.instances_of_modality(study, "SEG") and orthanc.instances_of_modality(study, "SR"),
                 60, "SEG and SR once Orthanc is back")
        state = wait_for(lambda: (s := node.state()[uid]).phase == "done" and s, 30, "done")
        assert state.results[0].sent_to == [orthanc.destination] and not state.last_error
    finally:
        node.stop()


def _digest(text: str) -> str:
    from monaiunetseg.node.spool import digest

    return digest(text)


def _tls_files(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_allowed_callers_mr_only_and_hostile_names(tmp_path):
    """Over TLS, only --allow'ed callers, only MR storage; a PatientID of ``../../evil`` with a NUL byte and a
    newline writes nothing outside the spool and forges no log line."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = _tls_files(tmp_path)
    port, dead = free_port(), free_port()
    spool = tmp_path / "work" / "spool"
    node = Node(spool, port, [f"DOWN@127.0.0.1:{dead}"], "--series-timeout", "1", "--retry-max", "1", "--allow",
                "TESTSCU", "--tls-cert", str(cert), "--tls-key", str(key), log=tmp_path / "node.log").start()
    client = ssl.create_default_context(cafile=str(cert))
    try:
        plain = AE(ae_title="TESTSCU")
        plain.add_requested_context(Verification)
        assert not plain.associate("127.0.0.1", port, ae_title=NODE_AET).is_established  # TLS only
        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context(Verification)
        assert intruder.associate("127.0.0.1", port, ae_title=NODE_AET, tls_args=(client, "localhost")).is_rejected
        ae = AE(ae_title="TESTSCU")
        for sop_class in (Verification, MRImageStorage, CTImageStorage):
            ae.add_requested_context(sop_class)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET, tls_args=(client, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        accepted = {c.abstract_syntax for c in assoc.accepted_contexts}
        assert MRImageStorage in accepted and CTImageStorage not in accepted
        image = nib.load(SAMPLE_FLAIR)
        crop = np.asarray(image.dataobj)[64:192, 64:192, 12:24].astype(np.float64)
        series = write_series(crop, image.affine, tmp_path / "evil", patient_id="../../evil\x00x\nFORGED",
                              description="../FLAIR\x00\nFORGED/..")
        for path in series["paths"]:
            assert assoc.send_c_store(path).Status == 0
        assoc.release()
        state = wait_for(lambda: (s := node.state().get(series["study_uid"])) and s.results and s, 120, "segmented")
    finally:
        node.stop()
    assert state.results[0].status == OK and "\x00" not in state.patient and "\n" not in state.patient
    assert not [line for line in node.text().splitlines() if line.startswith("FORGED")]  # one event, one line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "evil", "key.pem", "node.log", "work"]
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["spool"]
    for path in spool.rglob("*"):
        assert ".." not in path.relative_to(spool).parts and "\x00" not in str(path) and "evil/" not in str(path)
    sent = sorted(spool.glob("studies/*/send/*"))
    assert len(sent) == 2 and all(re.fullmatch(r"evil[A-Za-z0-9._-]*_(seg|sr)\.dcm", p.name) and ".." not in p.name
                                  for p in sent)
    # REVIEW in the SEG and SR the node made exactly when the verdict flags the case (this small crop is, today)
    flagged = state.results[0].review == "yes"
    assert all(pydicom.dcmread(p).SeriesDescription.startswith("REVIEW - ") == flagged for p in sent)


def test_full_spool_refuses_instances_and_bad_options_are_one_line_errors(sample_series, tmp_path):
    port = free_port()
    node = Node(tmp_path / "spool", port, [f"DOWN@127.0.0.1:{free_port()}"], "--spool-limit", "0.000001",
                log=tmp_path / "node.log").start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
        assert assoc.send_c_store(sample_series["paths"][0]).Status == 0xA700  # out of resources
        assoc.release()
    finally:
        node.stop()
    assert not list((tmp_path / "spool").glob("studies/*/dicom/*/*.dcm"))
    assert "spool limit" in node.text()
    env = {**os.environ, "PYTHONPATH": str(REPO / "MONAIUNetSeg")}
    (tmp_path / "file").write_text("")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    for bad, message in ((["--send-to", "ORTHANC@host"], "expected AET@HOST:PORT"),
                         (["--send-to", "A@h:1", "--port", str(busy.getsockname()[1]), "--host", "127.0.0.1"],
                          "Address already in use"),
                         (["--send-to", "A@h:1", "--spool", str(tmp_path / "file")], "cannot be used as the spool"),
                         (["--send-to", "A@h:1", "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", "k"],
                          "cannot load the TLS certificate")):
        run = subprocess.run([sys.executable, "-m", "monaiunetseg.cli", "listen", "--spool", str(tmp_path / "s2"),
                              *bad], capture_output=True, text=True, env=env)
        assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    busy.close()
