"""A loopback stand-in for GitHub's tarball download, for the backend tests.

`GET /repos/{owner}/{repo}/tarball/{sha}` on the "API" server answers 302 to a second server on
another port (another origin, like codeload.github.com), which serves the tarball. A private repo
needs `Authorization: Bearer TOKEN` on the API request (404 otherwise, as GitHub does). Both
servers record the Authorization header they saw.
"""
from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass, field

from aiohttp import web

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/widget"


def github_tarball(files: dict[str, str | bytes], top: str = "acme-widget-0123456",
                   extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A gzip tarball shaped like GitHub's: everything under one top-level folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        d = tarfile.TarInfo(top)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tf.addfile(d)
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{path}")
            info.size, info.mtime = len(data), int(time.time())
            info.mode = 0o755 if path.endswith(".sh") else 0o644
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buf.getvalue()


@dataclass
class TarballServer:
    tarball: bytes
    token: str | None = None            # when set, the API answers 404 without this token
    api_auth: list[str | None] = field(default_factory=list)
    codeload_auth: list[str | None] = field(default_factory=list)
    api_url: str = ""
    _runners: list[web.AppRunner] = field(default_factory=list)
    _codeload_url: str = ""

    def archive_url(self, repo: str = REPO, sha: str = SHA) -> str:
        return f"{self.api_url}/repos/{repo}/tarball/{sha}"

    async def start(self) -> "TarballServer":
        codeload = web.Application()
        codeload.router.add_get("/{tail:.*}", self._codeload)
        api = web.Application()
        api.router.add_get("/repos/{owner}/{repo}/tarball/{sha}", self._api)
        self._codeload_url = await self._serve(codeload)
        self.api_url = await self._serve(api)
        return self

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def close(self) -> None:
        for r in self._runners:
            await r.cleanup()

    async def _api(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.api_auth.append(auth)
        if self.token is not None and auth != f"Bearer {self.token}":
            return web.json_response({"message": "Not Found"}, status=404)
        m = request.match_info
        raise web.HTTPFound(f"{self._codeload_url}/{m['owner']}/{m['repo']}/legacy.tar.gz/{m['sha']}?token=tmp")

    async def _codeload(self, request: web.Request) -> web.Response:
        self.codeload_auth.append(request.headers.get("Authorization"))
        return web.Response(body=self.tarball, content_type="application/x-gzip")
