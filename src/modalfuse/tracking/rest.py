"""Read a model version from an MLflow server over its REST API, without the mlflow package.

The lean `serve` install has no MLflow client (it would bring ~70 MB and its own pins), yet
it serves `models:/NAME@champion`. An MLflow tracking server answers everything that needs
over plain HTTP:

- `GET /api/2.0/mlflow/registered-models/alias` and `/model-versions/get`: the version an
  alias points at, or a numbered version;
- `GET /api/2.0/mlflow/model-versions/get-download-uri`: where its files are;
- `GET /api/2.0/mlflow-artifacts/artifacts?path=...` (list) and `.../artifacts/<path>`
  (download): the server's artifact proxy (`mlflow server --serve-artifacts`, the default),
  for `mlflow-artifacts:` locations.

Credentials are MLflow's own variables (MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD); MLFLOW_TRACKING_INSECURE_TLS is honoured. Artifacts kept
somewhere the server does not proxy (an `s3://` location the client must read itself)
need MLflow's client: install `modalfuse[registry]`, and `fetch_bundle` uses it.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modalfuse.errors import ModelError

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
PROXIED = "mlflow-artifacts:"


class RestRegistryError(ModelError):
    """The server refused or could not answer (what it said is in the message; `status` is
    its HTTP status, None when it could not be reached)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code  # HTTP status, MLflow's error_code


@dataclass(frozen=True)
class RestModelVersion:
    """The fields of an MLflow model version the serving path uses."""

    name: str
    version: str
    run_id: str | None
    source: str | None


def usable(tracking_uri: str) -> bool:
    """True when `tracking_uri` is an MLflow server this reader can talk to."""
    return urllib.parse.urlsplit(tracking_uri).scheme in ("http", "https")


class RestRegistry:
    """A read-only view of one MLflow server's model registry and its artifact proxy."""

    def __init__(self, tracking_uri: str, timeout_s: float = 30.0):
        if not usable(tracking_uri):
            raise RestRegistryError(
                f"{tracking_uri!r} is not an MLflow server URL (http:// or https://); reading "
                "another kind of store needs MLflow's client: install modalfuse[registry]")
        self.base = tracking_uri.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"User-Agent": "modalfuse"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                          os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {pair}"
        self._context = None
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            self._context = ssl._create_unverified_context()

    # -- HTTP ---------------------------------------------------------------------------
    def _open(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = self.base + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        req = urllib.request.Request(url, headers=self._headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout_s, context=self._context)
        except urllib.error.HTTPError as e:
            code, message = _server_error(e)
            raise RestRegistryError(f"{self.base} answered {e.code} to {path}: "
                                    f"{code} {message}".rstrip(), status=e.code,
                                    code=code or None) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RestRegistryError(f"cannot reach the MLflow server at {self.base}: "
                                    f"{reason}") from None

    def _json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        with self._open(path, params) as r:
            return json.loads(r.read())

    # -- registry -----------------------------------------------------------------------
    def version_by_alias(self, name: str, alias: str) -> RestModelVersion | None:
        """The version of `name` that holds `alias`, or None when none does."""
        try:
            got = self._json(f"{API}/registered-models/alias", {"name": name, "alias": alias})
        except RestRegistryError as e:
            # No such model (404), or no such alias (400 INVALID_PARAMETER_VALUE).
            if e.status == 404 or e.code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return _version(got["model_version"])

    def version(self, name: str, version: str) -> RestModelVersion:
        """Version `version` of `name`."""
        got = self._json(f"{API}/model-versions/get", {"name": name, "version": version})
        return _version(got["model_version"])

    def download_uri(self, name: str, version: str) -> str:
        """Where the files of that version are (an artifact URI)."""
        got = self._json(f"{API}/model-versions/get-download-uri",
                         {"name": name, "version": version})
        return str(got["artifact_uri"])

    # -- artifacts ----------------------------------------------------------------------
    def download(self, name: str, version: str, dest: Path) -> int:
        """Copy every file of that version under `dest`; returns how many were copied."""
        uri = self.download_uri(name, version)
        if not uri.startswith(PROXIED):
            raise RestRegistryError(
                f"{name} version {version} keeps its files at {uri}, which the server does not "
                "proxy; start the server with --serve-artifacts, or install modalfuse[registry] "
                "so MLflow's client reads that store itself")
        root = uri[len(PROXIED):].lstrip("/")
        return self._download_tree(root, PurePosixPath(), dest)

    def _download_tree(self, root: str, rel: PurePosixPath, dest: Path) -> int:
        listed = self._json(ARTIFACTS, {"path": str(PurePosixPath(root) / rel)})
        count = 0
        for entry in listed.get("files", []):
            child = rel / PurePosixPath(entry["path"]).name
            if ".." in child.parts:
                raise RestRegistryError(f"the server listed an unsafe artifact path {child}")
            if entry.get("is_dir"):
                count += self._download_tree(root, child, dest)
                continue
            target = dest.joinpath(*child.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            quoted = urllib.parse.quote(str(PurePosixPath(root) / child))
            with self._open(f"{ARTIFACTS}/{quoted}") as r, open(target, "wb") as f:
                while block := r.read(1 << 20):
                    f.write(block)
            size = entry.get("file_size")
            if size is not None and target.stat().st_size != int(size):
                raise RestRegistryError(f"{child}: got {target.stat().st_size} bytes, the server "
                                        f"listed {size}")
            count += 1
        return count


def _version(mv: dict[str, Any]) -> RestModelVersion:
    return RestModelVersion(name=mv["name"], version=str(mv["version"]),
                            run_id=mv.get("run_id") or None, source=mv.get("source"))


def _server_error(e: urllib.error.HTTPError) -> tuple[str, str]:
    """(MLflow's error_code, its message) of an error answer; the HTTP reason if not JSON."""
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return str(body.get("error_code") or ""), str(body.get("message") or e.reason or "")
