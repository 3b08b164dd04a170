"""Starting and stopping the real `holdfast` binary, and running its CLI, for the compat suite.

Everything here is bounded in time; processes are stopped by pid (SIGTERM, bounded wait,
SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "hf_compat_admin_key_0123456789abcdef"
# Small limits so the limit tests are cheap; see test_errors.py.
MAX_FILE_BYTES = 65536
UPSTREAM_TIMEOUT_SECS = 2
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 60.0


def holdfast_bin() -> str:
    path = os.environ.get("HOLDFAST_BIN") or str(REPO / "target" / "debug" / "holdfast")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"holdfast binary not found at {path}: build it with `cargo build -p holdfast` "
            "or set HOLDFAST_BIN"
        )
    return path


try:  # loaded here, in the parent: the child may only call into it (no imports after fork)
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it if the test process dies, so a killed
    test run leaves no server behind."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HoldfastServer:
    """One `holdfast serve` process on a loopback port over a data directory."""

    def __init__(self, data_dir: Path, log_dir: Path, *, admin_key: str = ADMIN_KEY, extra_args: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.admin_key = admin_key
        self.extra_args = extra_args or []
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def project_endpoint(self, project: str) -> str:
        return f"{self.url}/api/projects/{project}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"holdfast-{self.port}-{self.starts}.log"

    def start(self) -> "HoldfastServer":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["HOLDFAST_ADMIN_KEY"] = self.admin_key
        env.setdefault("HOLDFAST_LOG", "info")
        # Client settings must not leak in from the developer's environment.
        env.pop("HOLDFAST_ENDPOINT", None)
        env.pop("HOLDFAST_KEY", None)
        args = [
            holdfast_bin(), "serve",
            "--data", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--max-file-bytes", str(MAX_FILE_BYTES),
            "--upstream-timeout-secs", str(UPSTREAM_TIMEOUT_SECS),
            *self.extra_args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent if _LIBC is not None else None)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"holdfast exited with {self.proc.returncode} during start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                last_err = e
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"holdfast not healthy after {START_TIMEOUT}s ({last_err}):\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, bounded wait, then SIGKILL. Returns the exit code."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def restart(self) -> int | None:
        code = self.stop()
        self.start()
        return code

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cli(self, *args: str, key: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the `holdfast` CLI against this server (output is JSON: stdout is a pipe)."""
        env = dict(os.environ)
        env.pop("HOLDFAST_ENDPOINT", None)
        env.pop("HOLDFAST_KEY", None)
        # Keep the developer's ~/.config/holdfast out of it.
        env["XDG_CONFIG_HOME"] = str(self.log_dir / "xdg")
        cmd = [holdfast_bin(), "--endpoint", self.url, "--key", key or self.admin_key, *args]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env)
        if check and res.returncode != 0:
            raise RuntimeError(f"`holdfast {' '.join(args)}` failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def cli_json(self, *args: str, key: str | None = None):
        out = self.cli(*args, key=key).stdout
        return json.loads(out) if out.strip() else None

    def setup_project(self, project: str, upstream_url: str, *, connection: str = "up", deployment: str = "gpt",
                      model: str = "fake-model", upstream_key: str = "x") -> None:
        """A project with a connection to the fake upstream and a deployment of its model."""
        self.cli("project", "create", project)
        self.cli("connection", "create", "--project", project, "--name", connection,
                 "--target", upstream_url, "--api-key", upstream_key)
        self.cli("deployment", "create", "--project", project, "--name", deployment,
                 "--connection", connection, "--model", model)


def project_client(server: HoldfastServer, project: str, key: str | None = None):
    """An `AIProjectClient` for `project`, authenticating with a Holdfast key as a bearer token.

    The default bearer-token policy refuses plain http, so the key goes in through
    `AzureKeyCredentialPolicy` (`Authorization: Bearer <key>`).
    """
    from azure.ai.projects import AIProjectClient
    from azure.core.credentials import AzureKeyCredential
    from azure.core.pipeline.policies import AzureKeyCredentialPolicy

    key = key or server.admin_key
    credential = AzureKeyCredential(key)
    return AIProjectClient(
        endpoint=server.project_endpoint(project),
        credential=credential,  # type: ignore[arg-type]
        authentication_policy=AzureKeyCredentialPolicy(credential, "Authorization", prefix="Bearer"),
        retry_total=0,
    )


def openai_client(project_client_, key: str):
    """The OpenAI client the Azure SDK hands out, with the Holdfast key and bounded timeouts."""
    return project_client_.get_openai_client(api_key=key, timeout=60.0, max_retries=0)
