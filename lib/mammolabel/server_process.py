"""Start and stop the real ``monailabel start_server`` as a subprocess (tests, benchmarks, scripts)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "mammography"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def monailabel_command() -> list[str]:
    """The ``monailabel`` launcher of this Python environment (its ``bin/`` must come first on PATH)."""
    exe = Path(sys.executable).parent / "monailabel"
    return [str(exe)] if exe.exists() else [shutil.which("monailabel") or "monailabel"]


class ServerProcess:
    """``with ServerProcess(studies) as server:`` runs the app on 127.0.0.1 and waits until /info answers.

    ``server.url`` is the base URL; the log is at ``server.log_path``. ``conf`` entries become
    ``--conf key value``; ``env`` is added to the environment.
    """

    def __init__(
        self,
        studies: str | os.PathLike,
        conf: dict[str, str] | None = None,
        app_dir: str | os.PathLike = APP_DIR,
        log_path: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 180.0,
    ):
        self.studies, self.app_dir, self.conf = str(studies), str(app_dir), dict(conf or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or Path(self.studies).parent / f"server-{self.port}.log")
        self.env, self.timeout_s = dict(env or {}), timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        cmd = monailabel_command() + ["start_server", "--app", self.app_dir, "--studies", self.studies,
                                      "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.conf.items():
            cmd += ["--conf", key, value]
        env = dict(os.environ, MONAI_LABEL_TRACKING_ENABLED="false", MLFLOW_ALLOW_FILE_STORE="true", **self.env)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{self.url}/info/", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready after {self.timeout_s}s; log:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
