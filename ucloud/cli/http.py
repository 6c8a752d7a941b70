"""A small client for the ucloud API: signs each request, and turns failures into CLIErrors."""

from __future__ import annotations

import re
from typing import Any

import requests

import ucloud
from ucloud.cli.config import ClientConfig
from ucloud.cli.errors import NotOffered, Refused, Unreachable

JSON = dict[str, Any]


class API:
    def __init__(
        self,
        config: ClientConfig,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.session = session or requests.Session()
        # Lets an operator tell this client's requests apart in the API's access log.
        self.session.headers["User-Agent"] = f"ucloud-cli/{ucloud.__version__}"
        self._offered: set[str] | None = None

    def get(self, path: str, **fields: Any) -> JSON:
        return self.request("GET", path, fields)

    def post(self, path: str, **fields: Any) -> JSON:
        return self.request("POST", path, fields)

    def request(self, method: str, path: str, fields: JSON) -> JSON:
        # Fields travel in a JSON body even for GET (the API reads both): a query string would
        # put the user's name and token into every access log and proxy log on the way.
        body = {**self.config.credentials(), **fields}
        response = self._send(method, path, json=body)
        if response.status_code >= 400:
            raise self._failure(path, response)
        try:
            data = response.json()
        except ValueError as e:
            raise Unreachable(
                f"{self.config.api_url}{path} answered {response.status_code} "
                "with something that is not JSON",
                f"is {self.config.api_url} really a ucloud API? Check UCLOUD_API_URL",
            ) from e
        return data if isinstance(data, dict) else {"items": data}

    def put_file(self, path: str, headers: dict[str, str], body: Any, size: int) -> JSON:
        """PUT a streamed body (a file-like object ``size`` bytes long), authenticated by
        headers: the body is the file, so the credentials cannot travel in it."""
        creds = self.config.credentials()
        headers = {
            **headers,
            "X-UCloud-User": creds["name"],
            "X-UCloud-Realm": creds["realm"],
            "X-UCloud-Token": creds["token"],
            "Content-Length": str(size),
            "Content-Type": "application/octet-stream",
        }
        response = self._send("PUT", path, data=body, headers=headers)
        if response.status_code >= 400:
            raise self._failure(path, response)
        data = response.json()
        return data if isinstance(data, dict) else {"items": data}

    def offers(self, path: str) -> bool | None:
        """Whether the server has ``path``, from its OpenAPI document (None: cannot tell)."""
        if self._offered is None:
            try:
                response = self._send("GET", "/openapi.json")
                self._offered = set(response.json()["paths"]) if response.ok else set()
            except (Unreachable, ValueError, KeyError, TypeError):
                return None
        return path in self._offered if self._offered else None

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.config.api_url + path
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout as e:
            raise Unreachable(
                f"the API at {self.config.api_url} did not answer within {self.timeout:g} s",
                "the server or its etcd may be overloaded; try again shortly",
            ) from e
        except requests.ConnectionError as e:
            raise Unreachable(
                f"cannot reach the API at {self.config.api_url}: {_reason(e)}",
                "is ucloud-api running there? The address is UCLOUD_API_URL, set in "
                f"{self.config.path} or in the environment",
            ) from e
        except requests.RequestException as e:
            raise Unreachable(f"request to {url} failed: {e}") from e

    def _failure(self, path: str, response: requests.Response) -> Refused | Unreachable:
        status = response.status_code
        message = _error_message(response)
        if status >= 500:
            return Unreachable(
                f"the API is unavailable (HTTP {status}): {message}", "try again shortly"
            )
        if status == 404 and self.offers(path) is False:
            return NotOffered(
                f"this API server does not offer {path} yet",
                status,
                "the server is older than this client; ask its administrator to upgrade it",
            )
        return Refused(message, status, _hint(status, message, self.config))


def _error_message(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    # Not the API's own answer: a proxy's page, say. Show a little of it.
    text = " ".join(response.text.split())[:200]
    return f"HTTP {response.status_code} {response.reason}" + (f": {text}" if text else "")


def _hint(status: int, message: str, config: ClientConfig) -> str:
    if status == 401:
        return (
            f"check UCLOUD_USER, UCLOUD_REALM and UCLOUD_SEED (in {config.path} or the "
            "environment), and that this machine's clock is right: tokens depend on it"
        )
    if status == 403 and message.startswith("quota exceeded"):
        return "see your limits and usage with: ucloud quota"
    if status == 403 and "administrators" in message:
        return f"this needs an administrator's account; you are {config.realm}/{config.user}"
    return ""


def _reason(error: requests.ConnectionError) -> str:
    # urllib3 buries the socket error ("[Errno 111] Connection refused") in a long repr.
    text = str(error)
    found = re.findall(r"\[Errno -?\d+\] ([^)\"']+)", text)
    return found[-1].strip().lower() if found else text
