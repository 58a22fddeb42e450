"""A real Orthanc (Debian's ``orthanc`` package) for the DICOM node's tests and benchmark, on free loopback ports.

Each instance gets its own JSON configuration (no plugins, no authentication, loopback REST only), storage in a
folder of its own, and the node registered as the DICOM modality ``node``; it is stopped afterwards. REST calls
use urllib: no HTTP dependency.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC_AET = "ORTHANC"
NODE_AET = "MONAIUNETSEG"


def orthanc_binary() -> str | None:
    """The Orthanc server binary (``/usr/sbin/Orthanc`` on Debian), or None when it is not installed."""
    found = shutil.which("Orthanc")  # /usr/sbin may be missing from a user's PATH
    return found or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None)


def wait_for(condition, timeout: float, what: str = "condition", poll: float = 0.2):
    """``condition()``'s first true value, polled every ``poll`` seconds; TimeoutError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc server; :meth:`start` waits until its REST API answers. Storage survives :meth:`stop`."""

    def __init__(self, folder: Path, node_port: int, http_port: int | None = None,
                 dicom_port: int | None = None) -> None:
        self.folder = folder
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.node_port = node_port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def destination(self) -> str:
        """The node's ``--send-to`` for this Orthanc."""
        return f"{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def config(self) -> dict:
        return {"Name": "monaiunetseg-test", "StorageDirectory": str(self.folder / "db"),
                "IndexDirectory": str(self.folder / "db"), "Plugins": [], "HttpPort": self.http_port,
                "DicomPort": self.dicom_port, "DicomAet": ORTHANC_AET, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                "DicomAlwaysAllowEcho": True, "SaveJobs": False, "DicomScuTimeout": 10, "StableAge": 1,
                "HttpsCACertificates": "", "ConcurrentJobs": 1,
                "DicomModalities": {"node": [NODE_AET, "127.0.0.1", self.node_port]}}

    def start(self, timeout: float = 30.0) -> Orthanc:
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError("Orthanc not installed (apt-get install orthanc)")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=1))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise TimeoutError(f"Orthanc did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    # REST
    def _request(self, method: str, path: str, body: bytes | None = None, raw: bool = False, timeout: float = 120.0):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
        return data if raw else json.loads(data or b"null")

    def get(self, path: str, raw: bool = False):
        return self._request("GET", path, raw=raw)

    def post(self, path: str, body: bytes | dict, timeout: float = 120.0):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._request("POST", path, data, timeout=timeout)

    def upload(self, files: list[Path]) -> str:
        """Store DICOM files by REST; returns the Orthanc ID of their (one) study."""
        studies = {self.post("/instances", Path(f).read_bytes())["ParentStudy"] for f in files}
        assert len(studies) == 1, studies
        return studies.pop()

    def send_to_node(self, resources: list[str], synchronous: bool = True) -> dict:
        """Have Orthanc C-STORE ``resources`` (study/series IDs) to the node, as a PACS routing rule would."""
        return self.post("/modalities/node/store", {"Resources": resources, "Synchronous": synchronous}, timeout=300)

    def series_of_study(self, study_id: str) -> list[dict]:
        return self.get(f"/studies/{study_id}/series")

    def instances_of_modality(self, study_id: str, modality: str) -> list[str]:
        return [i for s in self.series_of_study(study_id) if s["MainDicomTags"].get("Modality") == modality
                for i in s["Instances"]]

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file", raw=True)
