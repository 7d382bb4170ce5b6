"""A loopback stand-in for the part of GitHub's REST API that litbotd uses, for the tests.

(`litbotd demo` has its own small one, litbotd/demo_github.py.) It answers like GitHub does
(status codes, the fields litbotd reads, Link headers, rate-limit headers) for:

    GET   /app                                              the App (JWT)
    POST  /app/installations/{id}/access_tokens             mint a token, optionally scoped (JWT)
    GET   /app/hook/deliveries[/{id}]                       webhook deliveries, cursor pages (JWT)
    POST  /app/hook/deliveries/{id}/attempts                redeliver (JWT)
    GET   /repos/{o}/{r}/installation                       the repository's installation (JWT)
    GET   /rate_limit
    POST  /repos/{o}/{r}/check-runs                         check runs: create, get, update,
    GET   /repos/{o}/{r}/check-runs/{id}                      list for a ref (check_name, status,
    PATCH /repos/{o}/{r}/check-runs/{id}                      filter, app_id, page pagination);
                                                              output.annotations appended, ≤ 50 a request
    GET   /repos/{o}/{r}/commits/{ref}/check-runs
    GET   /repos/{o}/{r}/issues/{n}/comments                issue comments: list, create, update
    POST  /repos/{o}/{r}/issues/{n}/comments
    PATCH /repos/{o}/{r}/issues/comments/{id}
    POST  /repos/{o}/{r}/issues/comments/{id}/reactions
    GET   /repos/{o}/{r}/pulls/{n}[/files]                   files: paged, at most 3000 (GitHub's cap)
    GET   /repos/{o}/{r}/compare/{base}...{head}            files (at most 300, first page only), commits paged
    GET   /repos/{o}/{r}/contents/{path}?ref=               file (JSON+base64, or the raw media type) or directory
    GET   /repos/{o}/{r}/collaborators/{user}/permission
    GET   /repos/{o}/{r}/tarball/{ref}                      302 to /_codeload/..., a gzip tarball
    POST  /repos/{o}/{r}/statuses/{sha}                       whose top folder is owner-repo-sha7/
    GET   /user                                             the user of a user access token (OAuth)

and GitHub's OAuth web flow (on github.com itself, not the API, so not checked against the spec):

    GET   /login/oauth/authorize                            a sign-in form, or straight back to redirect_uri
    POST  /login/oauth/authorize                              with ?code&state for `signed_in` (set_oauth_app,
    POST  /login/oauth/access_token                           add_user, sign_in); a code is good once, 10 min

With `spec_path` (GitHub's OpenAPI description) every request is checked against it: the method
and path must be an operation, and path parameters, query parameters and the JSON body must match
the operation's schemas; each mismatch is recorded in `violations`. jsonschema is imported only
then. With `public_key_pem`, App endpoints verify the App JWT (RS256,
iss = app_id, lifetime ≤ 10 minutes) and the others a token this fake minted, with its scope.
Repository trees come from memory or from a local git repository (git runs as a subprocess).

This file is the tests' one GitHub: `FakeGitHub` (in the test's event loop: `await start()`, or
from a thread of its own with `serving(...)`, for tests that run a daemon or the CLI as a process),
and `GitHubWorld`, the repository and pull request the end-to-end tests talk about. `PRIVATE_PEM`
and `PUBLIC_PEM` are the test App's key pair (tests/data/keys).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import io
import itertools
import json
import re
import secrets
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import jwt as pyjwt
from aiohttp import web

DATA = Path(__file__).parent / "data"
SPEC = DATA / "rest-subset.json"
PRIVATE_PEM = (DATA / "keys" / "app.pem").read_text()
PUBLIC_PEM = (DATA / "keys" / "app.pub.pem").read_text()
REPO = "octo-org/widgets"   # GitHubWorld's repository and installation
INSTALLATION = 77
WEB = "https://github.com"
BOT = {"login": "litbot[bot]", "id": 41898282, "type": "Bot", "site_admin": False}
MAX_ANNOTATIONS_PER_REQUEST = 50
PULL_FILES_MAX = 3000    # files GitHub lists of a pull request
COMPARE_FILES_MAX = 300  # files GitHub lists in a comparison
_PERMISSION_LEVEL = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read",
                     "none": "none"}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _compile(template: str, multi: frozenset[str] = frozenset()) -> re.Pattern[str]:
    """A path template as a regex: `{name}` is one segment; names in `multi` may span several."""
    out = ""
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{"):
            name = part[1:-1]
            out += f"(?P<{name}>.*)" if name in multi else f"(?P<{name}>[^/]+)"
        else:
            out += re.escape(part)
    return re.compile(out + "$")


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class SpecValidator:
    """Checks requests against an OpenAPI 3.0 description (GitHub's), with jsonschema."""

    def __init__(self, spec_path: str) -> None:
        import jsonschema
        from referencing import Registry
        from referencing.jsonschema import DRAFT4

        with open(spec_path) as f:
            spec = json.load(f)
        _nullable_to_type(spec)
        self._spec = spec
        self._registry = Registry().with_resource("urn:spec", DRAFT4.create_resource(spec))
        self._validator_cls = jsonschema.Draft4Validator
        self._validators: dict[str, Any] = {}
        self.ops: list[tuple[str, re.Pattern[str], str, dict[str, Any]]] = []
        for template, item in spec["paths"].items():
            for method, op in item.items():
                if method not in ("get", "post", "put", "patch", "delete"):
                    continue
                params = [self._resolve(p) for p in item.get("parameters", []) + op.get("parameters", [])]
                multi = frozenset(p["name"] for p in params if p.get("x-multi-segment"))
                self.ops.append((method.upper(), _compile(template, multi), template, op))
        # Most literal text first, so /a/{x}/b wins over /a/{x*}.
        self.ops.sort(key=lambda o: -len(re.sub(r"\{[^}]+\}", "", o[2])))

    def _resolve(self, obj: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in obj:
            node: Any = self._spec
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj

    def _validator(self, pointer: str) -> Any:
        if pointer not in self._validators:
            self._validators[pointer] = self._validator_cls({"$ref": f"urn:spec#/{pointer}"}, registry=self._registry)
        return self._validators[pointer]

    def _errors(self, pointer: str, value: Any) -> list[str]:
        return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
                for e in itertools.islice(self._validator(pointer).iter_errors(value), 3)]

    def check(self, method: str, path: str, query: dict[str, str], body: Any, has_body: bool) -> list[str]:
        for op_method, regex, template, op in self.ops:
            m = regex.match(path) if op_method == method else None
            if m is None:
                continue
            problems: list[str] = []
            item_params = self._spec["paths"][template].get("parameters", [])
            declared = {}
            for p in item_params + op.get("parameters", []):
                p = self._resolve(p)
                declared[(p["in"], p["name"])] = p
            for (where, name), p in declared.items():
                if where == "path":
                    value: str | None = urllib.parse.unquote(m.group(name))
                elif where == "query":
                    value = query.get(name)
                else:
                    continue
                if value is None:
                    if p.get("required"):
                        problems.append(f"missing required {where} parameter {name!r}")
                    continue
                problems += [f"{where} parameter {name!r}: {e}" for e in self._param_errors(p, value)]
            for name in query:
                if ("query", name) not in declared:
                    problems.append(f"unknown query parameter {name!r}")
            rb = op.get("requestBody")
            if rb is None:
                if has_body:
                    problems.append("a body was sent, but the operation takes none")
            elif not has_body:
                if rb.get("required"):
                    problems.append("the operation requires a JSON body")
            elif "application/json" in rb.get("content", {}):
                pointer = _pointer("paths", template, method.lower(), "requestBody", "content", "application/json",
                                   "schema")
                problems += [f"body {e}" for e in self._errors(pointer, body)]
            return [f"{method} {path} ({op['operationId']}): {p}" for p in problems]
        return [f"{method} {path}: no such operation in the API description"]

    def _param_errors(self, p: dict[str, Any], raw: str) -> list[str]:
        schema = self._resolve(p.get("schema", {}))
        kind = schema.get("type")
        value: Any = raw
        try:
            if kind == "integer":
                value = int(raw)
            elif kind == "number":
                value = float(raw)
            elif kind == "boolean":
                if raw not in ("true", "false"):
                    raise ValueError
                value = raw == "true"
        except ValueError:
            return [f"{raw!r} is not of type {kind!r}"]
        key = f"param:{id(schema)}"
        if key not in self._validators:
            self._validators[key] = self._validator_cls(schema, registry=self._registry)
        return [e.message for e in itertools.islice(self._validators[key].iter_errors(value), 3)]


def _nullable_to_type(node: Any) -> None:
    """OpenAPI 3.0 `nullable: true` means JSON Schema `type: [T, "null"]`."""
    if isinstance(node, dict):
        if node.get("nullable") is True and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        for v in node.values():
            _nullable_to_type(v)
    elif isinstance(node, list):
        for v in node:
            _nullable_to_type(v)


class _Reply(Exception):
    """Raised inside a handler to answer at once (errors)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Repo:
    full_name: str
    id: int
    private: bool
    installation_id: int
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)
    git_dir: str | None = None
    default_branch: str = "main"

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/")[1]

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "full_name": self.full_name, "private": self.private,
                "owner": {"login": self.owner, "type": "Organization"}, "html_url": f"{WEB}/{self.full_name}",
                "fork": False, "default_branch": self.default_branch}


@dataclass
class _Call:
    method: str
    path: str
    args: dict[str, str]
    query: dict[str, str]
    body: Any
    accept: str
    repo: _Repo | None = None


async def _git(git_dir: str, *args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec("git", "-C", git_dir, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out


_Handler = Callable[["FakeGitHub", _Call], Awaitable[web.StreamResponse]]


class Hold:
    """A request parked until the test releases it (to kill a client in the middle of a call)."""

    def __init__(self, method: str, regex: re.Pattern[str], when: Callable[[Any], bool] | None = None) -> None:
        self.method = method
        self.re = regex
        self.when = when
        self.used = False
        self.reached = asyncio.Event()
        self.released = asyncio.Event()

    def release(self) -> None:
        self.released.set()


class FakeGitHub:
    def __init__(self, *, app_id: int = 1, public_key_pem: str | None = None, spec_path: str | None = None) -> None:
        self.app_id = app_id
        self.public_key_pem = public_key_pem
        self.validator = SpecValidator(spec_path) if spec_path else None
        self.url = ""
        self.token_ttl = 3600.0           # lifetime of minted tokens; tests may shorten it
        self.redelivery_status_code = 200  # the answer a redelivery attempt records
        self.check_runs: list[dict[str, Any]] = []
        self.comments: list[dict[str, Any]] = []
        self.reactions: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []     # every request body as sent (leak scans read them)
        self.violations: list[str] = []
        self.deliveries: list[dict[str, Any]] = []
        self.tokens: dict[str, dict[str, Any]] = {}  # token -> installation_id, expires_at, repositories, permissions
        self.repos: dict[str, _Repo] = {}
        self.pulls: dict[tuple[str, int], dict[str, Any]] = {}
        self.permissions: dict[tuple[str, str], str] = {}
        self.oauth_clients: dict[str, str] = {}        # client_id -> client_secret
        self.users: dict[str, dict[str, Any]] = {}       # login -> GET /user body
        self.signed_in: str | None = None               # who is signed in to "github.com" in the browser
        self.oauth_codes: dict[str, dict[str, Any]] = {}  # code -> client_id, redirect_uri, login, expires_at
        self.user_tokens: dict[str, str] = {}            # user access token -> login
        self._injections: list[dict[str, Any]] = []
        self._holds: list[Hold] = []
        self._ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(client_max_size=30 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- seeding and inspection -------------------------------------------------------------------
    def add_repo(self, full_name: str, files_by_sha: dict[str, dict[str, str | bytes]] | None = None, *,
                 git_dir: str | None = None, private: bool = False, installation_id: int = 1) -> None:
        """A repository: its trees by SHA (or any ref name) in memory, the first one also being the
        default branch `main`; or a local git repository."""
        trees = {sha: {p: c.encode() if isinstance(c, str) else c for p, c in files.items()}
                 for sha, files in (files_by_sha or {}).items()}
        self.repos[full_name] = _Repo(full_name, next(self._ids), private, installation_id, trees, git_dir)

    def add_pull(self, repo: str, number: int, *, head_sha: str, base_ref: str = "main", head_repo: str | None = None,
                 author_association: str = "OWNER", user: str = "octocat", base_sha: str | None = None) -> None:
        """`base_sha`: the tree the PR's files are compared with (default: the base branch's)."""
        base = self.repos[repo]
        head_name = head_repo or repo
        head = self.repos.get(head_name)
        head_json = head.json() if head else {**base.json(), "full_name": head_name, "name": head_name.split("/")[1],
                                              "owner": {"login": head_name.split("/")[0], "type": "User"}}
        head_json["fork"] = head_name != repo
        self.pulls[(repo, number)] = {
            "id": next(self._ids), "number": number, "state": "open", "draft": False, "title": f"PR {number}",
            "html_url": f"{WEB}/{repo}/pull/{number}", "user": {"login": user, "type": "User"},
            "author_association": author_association, "merged": False,
            "head": {"sha": head_sha, "ref": f"pr-{number}", "label": f"{head_json['owner']['login']}:pr-{number}",
                     "repo": head_json, "user": head_json["owner"]},
            "base": {"sha": base_sha or base_ref, "ref": base_ref, "label": f"{base.owner}:{base_ref}", "repo": base.json(),
                     "user": base.json()["owner"]},
        }

    def set_permission(self, repo: str, user: str, permission: str) -> None:
        self.permissions[(repo, user)] = permission

    def set_oauth_app(self, client_id: str, client_secret: str) -> None:
        self.oauth_clients[client_id] = client_secret

    def add_user(self, login: str) -> dict[str, Any]:
        uid = next(self._ids)
        self.users[login] = {
            "login": login, "id": uid, "node_id": f"U_{uid}", "avatar_url": "", "gravatar_id": None,
            "url": f"{self.url}/users/{login}", "html_url": f"{WEB}/{login}", "type": "User", "site_admin": False,
            "name": None, "company": None, "blog": None, "location": None, "email": None, "hireable": None,
            "bio": None, "public_repos": 0, "public_gists": 0, "followers": 0, "following": 0,
            "created_at": _iso(0), "updated_at": _iso(0)}
        return self.users[login]

    def sign_in(self, login: str | None) -> None:
        """The browser session at "github.com": authorize redirects straight back for this user
        (GitHub does so once the user has authorised the App); None shows the sign-in form."""
        if login is not None and login not in self.users:
            self.add_user(login)
        self.signed_in = login

    def add_delivery(self, guid: str | None = None, *, status_code: int = 502, age: float = 0.0,
                     redelivery: bool = False, event: str = "pull_request", action: str | None = "opened",
                     installation_id: int = 1) -> dict[str, Any]:
        """A webhook delivery `age` seconds ago; status_code 0 is a connection failure."""
        status = ("OK" if status_code < 400 else f"Invalid HTTP Response: {status_code}") if status_code \
            else "failed to connect"
        d = {"id": next(self._ids), "guid": guid or secrets.token_hex(16), "delivered_at": _iso(time.time() - age),
             "redelivery": redelivery, "duration": 0.05, "status": status, "status_code": status_code,
             "event": event, "action": action, "installation_id": installation_id, "repository_id": None,
             "throttled_at": None}
        self.deliveries.append(d)
        return d

    def inject(self, method: str, path_regex: str, status: int, *, headers: dict | None = None, body: Any = None,
               times: int = 1) -> None:
        """The next `times` requests matching (method, re.search on the path) get this answer."""
        self._injections.append({"method": method.upper(), "re": re.compile(path_regex), "status": status,
                                 "headers": headers or {}, "body": body, "times": times})

    def hold(self, method: str, path_regex: str, when: Callable[[Any], bool] | None = None) -> "Hold":
        """The next matching request (and whose JSON body satisfies `when`, if given) waits until
        `release()`; `reached` is set when it arrives."""
        h = Hold(method.upper(), re.compile(path_regex), when)
        self._holds.append(h)
        return h

    def count(self, method: str, path_regex: str) -> int:
        """How many requests matched (method, re.search on the path)."""
        rx = re.compile(path_regex)
        return sum(1 for m, p in self.requests if m == method.upper() and rx.search(p))

    # -- HTTP plumbing ----------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": str(max(1, 5000 - len(self.requests))),
                "x-ratelimit-reset": str(int(time.time()) + 3600), "x-ratelimit-used": str(len(self.requests)),
                "x-ratelimit-resource": "core", "x-github-request-id": secrets.token_hex(8).upper()}

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers={**self._headers(), **(headers or {})},
                                 dumps=lambda o: json.dumps(o, separators=(",", ":")))

    def _error(self, status: int, message: str) -> web.Response:
        return self._json(status, {"message": message, "documentation_url": "https://docs.github.com/rest",
                                   "status": str(status)})

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        self.requests.append((method, path))
        raw = await request.read()
        self.bodies.append(raw)
        if path.startswith("/login/oauth/"):  # github.com's web flow: forms, not the REST API
            return await self._oauth(request, path, raw)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self.violations.append(f"{method} {path}: the body is not JSON")
                return self._error(400, "Problems parsing JSON")
        if path.startswith("/_codeload/"):
            return await self._codeload(path)
        query = dict(request.query)
        if self.validator is not None:
            self.violations += self.validator.check(method, path, query, body, bool(raw))
        for h in self._holds:
            if not h.used and h.method == method and h.re.search(path) and (h.when is None or h.when(body)):
                # Applied after release even if the client went away meanwhile: the worst case
                # of a crash, GitHub did it but the caller never heard.
                h.used = True
                h.reached.set()
                await h.released.wait()
                break  # one hold per request: a later hold waits for the next matching one
        for inj in self._injections:
            if inj["times"] > 0 and inj["method"] == method and inj["re"].search(path):
                inj["times"] -= 1
                return self._json(inj["status"], inj["body"] if inj["body"] is not None
                                  else {"message": HTTPStatus(inj["status"]).phrase},
                                  {k: str(v) for k, v in inj["headers"].items()})
        for r_method, regex, handler, auth, scope in _ROUTES:
            m = regex.match(path) if r_method == method else None
            if m is None:
                continue
            call = _Call(method, path, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}, query, body,
                         request.headers.get("Accept", ""))
            try:
                self._authorize(request.headers.get("Authorization", ""), auth, scope, call)
                return await handler(self, call)
            except _Reply as e:
                return self._error(e.status, e.message)
            except (KeyError, ValueError, TypeError) as e:
                # A malformed request (a missing field, a bad number): GitHub answers 422.
                self.violations.append(f"{method} {path}: rejected, {type(e).__name__}: {e}")
                return self._error(422, f"Invalid request: {type(e).__name__} {e}")
        return self._error(404, "Not Found")

    def _authorize(self, header: str, auth: str, scope: str, call: _Call) -> None:
        scheme, _, cred = header.partition(" ")
        if auth == "app":
            if scheme.lower() != "bearer" or not cred:
                raise _Reply(401, "A JSON web token could not be decoded")
            if self.public_key_pem:
                self._verify_jwt(cred, self.public_key_pem)
            return
        if "owner" in call.args:
            call.repo = self.repos.get(f"{call.args['owner']}/{call.args['repo']}")
            if call.repo is None:
                raise _Reply(404, "Not Found")
        if auth == "any":
            return
        if auth == "user":
            if scheme.lower() not in ("token", "bearer") or cred not in self.user_tokens:
                raise _Reply(401, "Bad credentials")
            call.args["login"] = self.user_tokens[cred]
            return
        if not cred and call.method == "GET" and call.repo is not None and not call.repo.private:
            return  # a public repository reads without credentials, as on GitHub
        if scheme.lower() not in ("token", "bearer") or not cred:
            raise _Reply(401, "Requires authentication")
        if not self.public_key_pem:
            return
        tok = self.tokens.get(cred)
        if tok is None or tok["expires_at"] <= time.time():
            raise _Reply(401, "Bad credentials")
        repo = call.repo
        assert repo is not None
        if tok["installation_id"] != repo.installation_id or \
                (tok["repositories"] is not None and repo.name not in tok["repositories"]):
            raise _Reply(404, "Not Found")
        perms = tok["permissions"]
        if perms is None or scope == "metadata":  # every token may read metadata
            return
        if perms.get(scope) not in ("read", "write") or (call.method != "GET" and perms[scope] != "write"):
            raise _Reply(403, "Resource not accessible by integration")

    def _verify_jwt(self, token: str, public_key_pem: str) -> None:
        try:
            claims = pyjwt.decode(token, public_key_pem, algorithms=["RS256"],
                                  options={"require": ["iat", "exp", "iss"]}, leeway=5)
        except pyjwt.PyJWTError:
            raise _Reply(401, "A JSON web token could not be decoded") from None
        if str(claims["iss"]) != str(self.app_id):
            raise _Reply(401, "'Issuer' claim ('iss') must be an Integer")
        if claims["exp"] - claims["iat"] > 600 or claims["exp"] - time.time() > 600:
            raise _Reply(401, "'Expiration time' claim ('exp') is too far in the future")

    def _page(self, call: _Call, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """Page-number pagination with GitHub's Link header."""
        per = min(100, max(1, int(call.query.get("per_page", 30))))
        page = max(1, int(call.query.get("page", 1)))
        last = max(1, -(-len(items) // per))

        def link(n: int, rel: str) -> str:
            q = urllib.parse.urlencode({**call.query, "per_page": per, "page": n})
            return f'<{self.url}{call.path}?{q}>; rel="{rel}"'

        links = []
        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        return items[(page - 1) * per:page * per], ({"Link": ", ".join(links)} if links else {})

    # -- the App ------------------------------------------------------------------------------------
    async def _get_app(self, call: _Call) -> web.Response:
        return self._json(200, {"id": self.app_id, "slug": "litbot", "name": "litbot", "node_id": "A_1",
                                "owner": {"login": "litbot-org", "type": "Organization"},
                                "html_url": f"{WEB}/apps/litbot", "description": "", "external_url": WEB,
                                "created_at": _iso(0), "updated_at": _iso(0),
                                "permissions": {"checks": "write", "contents": "read", "issues": "write",
                                                "pull_requests": "write", "statuses": "write", "metadata": "read"},
                                "events": ["pull_request", "check_run", "check_suite", "issue_comment", "merge_group",
                                           "push"]})

    async def _access_token(self, call: _Call) -> web.Response:
        iid = int(call.args["installation_id"])
        repos = [r for r in self.repos.values() if r.installation_id == iid]
        if not repos:
            raise _Reply(404, "Not Found")
        body = call.body or {}
        names = body.get("repositories")
        if names is not None and not set(names) <= {r.name for r in repos}:
            raise _Reply(422, "There is at least one repository that does not exist or is not accessible to the "
                              "parent installation.")
        token = "ghs_" + secrets.token_urlsafe(27).replace("-", "a").replace("_", "b")[:36]
        expires = time.time() + self.token_ttl
        perms = body.get("permissions")
        self.tokens[token] = {"installation_id": iid, "expires_at": expires, "repositories": names,
                              "permissions": perms}
        out: dict[str, Any] = {"token": token, "expires_at": _iso(expires),
                               "permissions": perms or {"checks": "write", "contents": "read", "issues": "write",
                                                        "pull_requests": "write", "statuses": "write",
                                                        "metadata": "read"},
                               "repository_selection": "selected" if names else "all"}
        if names:
            out["repositories"] = [r.json() for r in repos if r.name in names]
        return self._json(201, out)

    async def _repo_installation(self, call: _Call) -> web.Response:
        repo = self.repos.get(f"{call.args['owner']}/{call.args['repo']}")
        if repo is None:
            raise _Reply(404, "Not Found")
        return self._json(200, {"id": repo.installation_id, "app_id": self.app_id, "app_slug": "litbot",
                                "account": {"login": repo.owner, "type": "Organization"},
                                "target_type": "Organization", "repository_selection": "all",
                                "permissions": {}, "events": [], "created_at": _iso(0), "updated_at": _iso(0)})

    async def _rate_limit(self, call: _Call) -> web.Response:
        h = self._headers()
        core = {"limit": 5000, "remaining": int(h["x-ratelimit-remaining"]), "used": int(h["x-ratelimit-used"]),
                "reset": int(h["x-ratelimit-reset"])}
        return self._json(200, {"resources": {"core": core}, "rate": core})

    # -- OAuth web flow (github.com) and the signed-in user ---------------------------------------
    async def _oauth(self, request: web.Request, path: str, raw: bytes) -> web.StreamResponse:
        form = {**request.query, **(dict(urllib.parse.parse_qsl(raw.decode())) if raw else {})}
        if path == "/login/oauth/authorize":
            client_id, redirect_uri, state = form.get("client_id", ""), form.get("redirect_uri", ""), form.get("state", "")
            if client_id not in self.oauth_clients or not redirect_uri.startswith(("http://", "https://")):
                return web.Response(status=404, text="Not Found")
            login = form.get("login") if request.method == "POST" else self.signed_in
            if not login:
                page = ("<!doctype html><title>Sign in to GitHub</title><form method=post>"
                        f"<input type=hidden name=client_id value='{html.escape(client_id, True)}'>"
                        f"<input type=hidden name=redirect_uri value='{html.escape(redirect_uri, True)}'>"
                        f"<input type=hidden name=state value='{html.escape(state, True)}'>"
                        "<label>Username <input name=login id=login></label>"
                        "<button type=submit id=authorize>Authorize</button></form>")
                return web.Response(text=page, content_type="text/html")
            if login not in self.users:
                self.add_user(login)
            self.signed_in = login
            code = secrets.token_hex(10)
            self.oauth_codes[code] = {"client_id": client_id, "redirect_uri": redirect_uri, "login": login,
                                      "expires_at": time.time() + 600}
            sep = "&" if "?" in redirect_uri else "?"
            return web.Response(status=302, headers={
                "Location": f"{redirect_uri}{sep}{urllib.parse.urlencode({'code': code, 'state': state})}"})
        if path == "/login/oauth/access_token" and request.method == "POST":
            # GitHub answers 200 with an "error" field for a bad code or client secret.
            client_id = form.get("client_id", "")
            if self.oauth_clients.get(client_id) is None or \
                    not secrets.compare_digest(self.oauth_clients[client_id], form.get("client_secret", "")):
                return self._oauth_answer(request, {"error": "incorrect_client_credentials",
                                                    "error_description": "The client_id and/or client_secret "
                                                                         "passed are incorrect."})
            grant = self.oauth_codes.pop(form.get("code", ""), None)
            if grant is None or grant["expires_at"] <= time.time() or grant["client_id"] != client_id or \
                    ("redirect_uri" in form and form["redirect_uri"] != grant["redirect_uri"]):
                return self._oauth_answer(request, {"error": "bad_verification_code",
                                                    "error_description": "The code passed is incorrect or expired."})
            token = "ghu_" + secrets.token_hex(18)
            self.user_tokens[token] = grant["login"]
            return self._oauth_answer(request, {"access_token": token, "token_type": "bearer", "scope": ""})
        return web.Response(status=404, text="Not Found")

    def _oauth_answer(self, request: web.Request, body: dict[str, str]) -> web.Response:
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response(body)
        return web.Response(text=urllib.parse.urlencode(body), content_type="application/x-www-form-urlencoded")

    async def _get_user(self, call: _Call) -> web.Response:
        return self._json(200, self.users[call.args["login"]])

    # -- webhook deliveries -------------------------------------------------------------------------
    def _sorted_deliveries(self) -> list[dict[str, Any]]:
        return sorted(self.deliveries, key=lambda d: (d["delivered_at"], d["id"]), reverse=True)

    async def _list_deliveries(self, call: _Call) -> web.Response:
        items = self._sorted_deliveries()
        if call.query.get("status") == "success":
            items = [d for d in items if 200 <= d["status_code"] < 400]
        elif call.query.get("status") == "failure":
            items = [d for d in items if 400 <= d["status_code"] < 600]
        per = min(100, max(1, int(call.query.get("per_page", 30))))
        start = 0
        if "cursor" in call.query:
            ids = [f"v1_{d['id']}" for d in items]
            if call.query["cursor"] not in ids:
                raise _Reply(422, "Invalid cursor")
            start = ids.index(call.query["cursor"])
        chunk = items[start:start + per]
        headers = {}
        if start + per < len(items):
            q = urllib.parse.urlencode({**call.query, "per_page": per, "cursor": f"v1_{items[start + per]['id']}"})
            headers["Link"] = f'<{self.url}{call.path}?{q}>; rel="next"'
        return self._json(200, chunk, headers)

    def _delivery(self, call: _Call) -> dict[str, Any]:
        for d in self.deliveries:
            if d["id"] == int(call.args["delivery_id"]):
                return d
        raise _Reply(404, "Not Found")

    async def _get_delivery(self, call: _Call) -> web.Response:
        d = self._delivery(call)
        return self._json(200, {**d, "url": "", "request": {"headers": {"X-GitHub-Event": d["event"],
                                                                          "X-GitHub-Delivery": d["guid"]},
                                                              "payload": {}},
                                "response": {"headers": {}, "payload": ""}})

    async def _redeliver(self, call: _Call) -> web.Response:
        d = self._delivery(call)
        code = self.redelivery_status_code
        self.add_delivery(d["guid"], status_code=code, redelivery=True, event=d["event"], action=d["action"],
                          installation_id=d["installation_id"])
        return self._json(202, {})

    # -- check runs ---------------------------------------------------------------------------------
    def _run_json(self, run: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in run.items() if k not in ("history", "repo", "annotations", "concluded_at")}
        given = run.get("output") or {}
        out["output"] = {"title": given.get("title"), "summary": given.get("summary"), "text": given.get("text"),
                         "annotations_count": len(run["annotations"]),
                         "annotations_url": f"{self.url}/repos/{run['repo']}/check-runs/{run['id']}/annotations"}
        return out

    def _apply_run(self, run: dict[str, Any], body: dict[str, Any]) -> None:
        output = dict(body.get("output") or {})
        added = output.pop("annotations", None) or []
        if len(added) > MAX_ANNOTATIONS_PER_REQUEST:  # GitHub's limit, refused before anything changes
            raise _Reply(422, f"Invalid request. Only {MAX_ANNOTATIONS_PER_REQUEST} annotations are allowed"
                              " per request.")
        for k in ("name", "details_url", "external_id", "status", "conclusion", "started_at", "completed_at",
                  "output", "actions"):
            if k in body:
                run[k] = output if k == "output" else body[k]
        run["annotations"].extend(added)  # appended, as GitHub does: an update never removes any
        if body.get("conclusion"):
            run["status"] = "completed"
            run["completed_at"] = body.get("completed_at") or _iso(time.time())
            run.setdefault("concluded_at", time.time())  # when GitHub first saw it completed (for tests)
        if run["status"] == "completed" and not run.get("conclusion"):
            raise _Reply(422, "Invalid request. \"conclusion\" wasn't supplied.")
        if run["status"] == "in_progress" and not run.get("started_at"):
            run["started_at"] = _iso(time.time())

    async def _create_run(self, call: _Call) -> web.Response:
        body = call.body or {}
        for k in ("name", "head_sha"):
            if not body.get(k):
                raise _Reply(422, f"Invalid request. \"{k}\" wasn't supplied.")
        repo = call.repo
        assert repo is not None
        rid = next(self._ids)
        run: dict[str, Any] = {
            "id": rid, "node_id": f"CR_{rid}", "repo": repo.full_name, "head_sha": body["head_sha"],
            "name": body["name"], "external_id": "", "details_url": "", "status": "queued", "conclusion": None,
            "started_at": None, "completed_at": None, "output": {},
            "url": f"{self.url}/repos/{repo.full_name}/check-runs/{rid}",
            "html_url": f"{WEB}/{repo.full_name}/runs/{rid}", "check_suite": {"id": 1},
            "app": {"id": self.app_id, "slug": "litbot", "name": "litbot"}, "pull_requests": [],
            "history": [body], "annotations": [],
        }
        self._apply_run(run, body)
        self.check_runs.append(run)
        return self._json(201, self._run_json(run))

    def _run(self, call: _Call) -> dict[str, Any]:
        rid = int(call.args["check_run_id"])
        for run in self.check_runs:
            if run["id"] == rid and call.repo is not None and run["repo"] == call.repo.full_name:
                return run
        raise _Reply(404, "Not Found")

    async def _get_run(self, call: _Call) -> web.Response:
        return self._json(200, self._run_json(self._run(call)))

    async def _update_run(self, call: _Call) -> web.Response:
        run = self._run(call)
        body = call.body or {}
        self._apply_run(run, body)
        run["history"].append(body)
        return self._json(200, self._run_json(run))

    async def _list_runs(self, call: _Call) -> web.Response:
        assert call.repo is not None
        runs = [r for r in self.check_runs if r["repo"] == call.repo.full_name and r["head_sha"] == call.args["ref"]]
        q = call.query
        if "check_name" in q:
            runs = [r for r in runs if r["name"] == q["check_name"]]
        if "status" in q:
            runs = [r for r in runs if r["status"] == q["status"]]
        if "app_id" in q:
            runs = [r for r in runs if r["app"]["id"] == int(q["app_id"])]
        if q.get("filter", "latest") == "latest":
            latest: dict[str, dict[str, Any]] = {}
            for r in runs:
                latest[r["name"]] = r  # later ids win
            runs = list(latest.values())
        runs = sorted(runs, key=lambda r: r["id"], reverse=True)
        page, headers = self._page(call, runs)
        return self._json(200, {"total_count": len(runs), "check_runs": [self._run_json(r) for r in page]}, headers)

    # -- issue comments and reactions ---------------------------------------------------------------
    def _comment_json(self, c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in ("history", "repo", "issue_number")}

    async def _list_comments(self, call: _Call) -> web.Response:
        assert call.repo is not None
        n = int(call.args["issue_number"])
        items = [c for c in self.comments if c["repo"] == call.repo.full_name and c["issue_number"] == n]
        if "since" in call.query:
            items = [c for c in items if c["updated_at"] >= call.query["since"]]
        page, headers = self._page(call, items)
        return self._json(200, [self._comment_json(c) for c in page], headers)

    async def _create_comment(self, call: _Call) -> web.Response:
        assert call.repo is not None
        n = int(call.args["issue_number"])
        if (call.repo.full_name, n) not in self.pulls:
            raise _Reply(404, "Not Found")
        cid = next(self._ids)
        now = _iso(time.time())
        c = {"id": cid, "node_id": f"IC_{cid}", "repo": call.repo.full_name, "issue_number": n,
             "body": call.body["body"], "user": BOT, "author_association": "NONE",
             "html_url": f"{WEB}/{call.repo.full_name}/pull/{n}#issuecomment-{cid}",
             "issue_url": f"{self.url}/repos/{call.repo.full_name}/issues/{n}",
             "url": f"{self.url}/repos/{call.repo.full_name}/issues/comments/{cid}",
             "created_at": now, "updated_at": now, "history": [call.body["body"]]}
        self.comments.append(c)
        return self._json(201, self._comment_json(c))

    def _comment(self, call: _Call) -> dict[str, Any]:
        cid = int(call.args["comment_id"])
        for c in self.comments:
            if c["id"] == cid and call.repo is not None and c["repo"] == call.repo.full_name:
                return c
        raise _Reply(404, "Not Found")

    async def _update_comment(self, call: _Call) -> web.Response:
        c = self._comment(call)
        c["body"] = call.body["body"]
        c["updated_at"] = _iso(time.time())
        c["history"].append(c["body"])
        return self._json(200, self._comment_json(c))

    async def _react(self, call: _Call) -> web.Response:
        # Commands arrive in users' comments the fake never saw created (they come in webhooks):
        # any comment id of a known repository may get a reaction.
        assert call.repo is not None
        cid = int(call.args["comment_id"])
        content = call.body["content"]
        for r in self.reactions:
            if r["comment_id"] == cid and r["content"] == content:
                return self._json(200, {k: v for k, v in r.items() if k not in ("comment_id", "repo")})
        r = {"id": next(self._ids), "node_id": "REA_1", "user": BOT, "content": content,
             "created_at": _iso(time.time()), "comment_id": cid, "repo": call.repo.full_name}
        self.reactions.append(r)
        return self._json(201, {k: v for k, v in r.items() if k not in ("comment_id", "repo")})

    # -- pulls, permissions, statuses ---------------------------------------------------------------
    def _pull(self, call: _Call) -> dict[str, Any]:
        assert call.repo is not None
        pr = self.pulls.get((call.repo.full_name, int(call.args["pull_number"])))
        if pr is None:
            raise _Reply(404, "Not Found")
        return pr

    async def _get_pull(self, call: _Call) -> web.Response:
        return self._json(200, self._pull(call))

    async def _pull_files(self, call: _Call) -> web.Response:
        pr = self._pull(call)
        assert call.repo is not None
        changed = await self._changed(call.repo, pr["base"]["sha"], pr["head"]["sha"])
        # GitHub lists at most 3000 files of a pull request, whatever the page asked for.
        files = [self._file_json(name, status) for name, status in changed][:PULL_FILES_MAX]
        page, headers = self._page(call, files)
        return self._json(200, page, headers)

    @staticmethod
    def _file_json(name: str, status: str) -> dict[str, Any]:
        return {"sha": "0" * 40, "filename": name, "status": status, "additions": 0, "deletions": 0,
                "changes": 0, "blob_url": "", "raw_url": "", "contents_url": ""}

    async def _compare(self, call: _Call) -> web.Response:
        """`BASE...HEAD`: the files (at most 300, on the first page only, as GitHub does)."""
        repo = call.repo
        assert repo is not None
        base_ref, sep, head_ref = call.args["basehead"].partition("...")
        if not sep:
            base_ref, sep, head_ref = call.args["basehead"].partition("..")
        base, head = await self._resolve(repo, base_ref), await self._resolve(repo, head_ref)
        if not sep or base is None or head is None:
            raise _Reply(404, "Not Found")
        changed = await self._changed(repo, base, head)
        first = int(call.query.get("page", 1)) <= 1
        files = [self._file_json(name, status) for name, status in changed][:COMPARE_FILES_MAX] if first else []
        api = f"{self.url}/repos/{repo.full_name}/compare/{base_ref}...{head_ref}"
        return self._json(200, {
            "url": api, "html_url": f"{WEB}/{repo.full_name}/compare/{base_ref}...{head_ref}",
            "permalink_url": api, "diff_url": f"{api}.diff", "patch_url": f"{api}.patch",
            "status": "identical" if base == head else "ahead", "ahead_by": 0 if base == head else 1,
            "behind_by": 0, "total_commits": 0 if base == head else 1, "commits": [], "files": files})

    async def _permission(self, call: _Call) -> web.Response:
        assert call.repo is not None
        user = call.args["username"]
        # On a public repository everyone reads: a stranger's permission is "read", as on GitHub.
        role = self.permissions.get((call.repo.full_name, user), "none" if call.repo.private else "read")
        return self._json(200, {"permission": _PERMISSION_LEVEL[role], "role_name": role,
                                "user": {"login": user, "type": "User"}})

    async def _create_status(self, call: _Call) -> web.Response:
        assert call.repo is not None
        sid = next(self._ids)
        now = _iso(time.time())
        s = {"id": sid, "node_id": f"SC_{sid}", "state": call.body["state"],
             "context": call.body.get("context", "default"), "description": call.body.get("description"),
             "target_url": call.body.get("target_url"), "sha": call.args["sha"], "repo": call.repo.full_name,
             "url": f"{self.url}/repos/{call.repo.full_name}/statuses/{call.args['sha']}", "avatar_url": None,
             "creator": BOT, "created_at": now, "updated_at": now}
        self.statuses.append(s)
        return self._json(201, {k: v for k, v in s.items() if k not in ("sha", "repo")})

    # -- repository contents ------------------------------------------------------------------------
    async def _resolve(self, repo: _Repo, ref: str) -> str | None:
        if repo.git_dir is None:
            if ref == repo.default_branch and ref not in repo.trees:
                return next(iter(repo.trees), None)  # the first tree given stands for the default branch
            return ref if ref in repo.trees else None
        rc, out = await _git(repo.git_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        return out.decode().strip() if rc == 0 else None

    async def _read(self, repo: _Repo, sha: str, path: str) -> bytes | list[tuple[str, str, int, str]] | None:
        """A file's bytes, a directory's (name, type, size, sha) entries, or None."""
        path = path.strip("/")
        if repo.git_dir is None:
            tree = repo.trees[sha]
            if path in tree:
                return tree[path]
            prefix = f"{path}/" if path else ""
            entries: dict[str, tuple[str, str, int, str]] = {}
            for p, data in sorted(tree.items()):
                if p.startswith(prefix):
                    head, sep, _ = p[len(prefix):].partition("/")
                    entries.setdefault(head, (head, "dir", 0, "0" * 40) if sep else
                                       (head, "file", len(data), _blob_sha(data)))
            return list(entries.values()) or None
        spec = f"{sha}:{path}"
        rc, kind = await _git(repo.git_dir, "cat-file", "-t", spec)
        if rc != 0:
            return None
        if kind.strip() == b"blob":
            return (await _git(repo.git_dir, "cat-file", "blob", spec))[1]
        listing = []
        for line in (await _git(repo.git_dir, "ls-tree", "-l", spec))[1].decode().splitlines():
            meta, name = line.split("\t", 1)
            _, kind_s, obj, size = meta.split()
            listing.append((name, "dir" if kind_s == "tree" else "file", 0 if size == "-" else int(size), obj))
        return listing

    async def _changed(self, repo: _Repo, base: str, head: str) -> list[tuple[str, str]]:
        if repo.git_dir is not None:
            rc, out = await _git(repo.git_dir, "diff", "--name-status", base, head)
            names = {"A": "added", "M": "modified", "D": "removed"}
            return [(line.split("\t")[-1], names.get(line[0], "modified")) for line in out.decode().splitlines()] \
                if rc == 0 else []
        new, old = repo.trees.get(head, {}), repo.trees.get(base, {})
        return sorted([(p, "added" if p not in old else "modified") for p, d in new.items() if old.get(p) != d] +
                      [(p, "removed") for p in old if p not in new])

    async def _contents(self, call: _Call) -> web.Response:
        repo = call.repo
        assert repo is not None
        ref = call.query.get("ref", repo.default_branch)
        sha = await self._resolve(repo, ref)
        path = call.args["path"].strip("/")
        found = await self._read(repo, sha, path) if sha else None
        if found is None:
            raise _Reply(404, "Not Found")

        def entry(p: str, kind: str, size: int, obj: str) -> dict[str, Any]:
            api = f"{self.url}/repos/{repo.full_name}/contents/{p}?ref={ref}"
            html = f"{WEB}/{repo.full_name}/{'blob' if kind == 'file' else 'tree'}/{ref}/{p}"
            git = f"{self.url}/repos/{repo.full_name}/git/{'blobs' if kind == 'file' else 'trees'}/{obj}"
            return {"type": kind, "name": p.rsplit("/", 1)[-1], "path": p, "sha": obj, "size": size, "url": api,
                    "html_url": html, "git_url": git,
                    "download_url": f"https://raw.githubusercontent.com/{repo.full_name}/{ref}/{p}"
                    if kind == "file" else None, "_links": {"self": api, "git": git, "html": html}}

        if isinstance(found, bytes):
            if "raw" in call.accept:
                media = call.accept.split(",")[0].strip()
                return web.Response(body=found, headers={**self._headers(), "Content-Type": f"{media}; charset=utf-8"})
            return self._json(200, {**entry(path, "file", len(found), _blob_sha(found)), "encoding": "base64",
                                    "content": base64.encodebytes(found).decode()})
        return self._json(200, [entry(f"{path}/{n}".lstrip("/"), k, s, o) for n, k, s, o in found])

    async def _tarball(self, call: _Call) -> web.Response:
        repo = call.repo
        assert repo is not None
        sha = await self._resolve(repo, call.args["ref"])
        if sha is None:
            raise _Reply(404, "Not Found")
        return web.Response(status=302, headers={
            **self._headers(), "Location": f"{self.url}/_codeload/{repo.full_name}/legacy.tar.gz/{sha}"})

    async def _codeload(self, path: str) -> web.Response:
        parts = path.split("/")  # "", "_codeload", owner, repo, "legacy.tar.gz", sha
        repo = self.repos.get(f"{parts[2]}/{parts[3]}") if len(parts) == 6 else None
        if repo is None or await self._resolve(repo, parts[5]) is None:
            return web.Response(status=404, text="Not Found")
        sha = parts[5]
        prefix = f"{repo.owner}-{repo.name}-{sha[:7]}/"
        if repo.git_dir is not None:
            _, data = await _git(repo.git_dir, "archive", "--format=tar.gz", f"--prefix={prefix}", sha)
        else:
            data = await asyncio.to_thread(_tar_gz, prefix, repo.trees[sha])
        return web.Response(body=data, headers={
            "Content-Type": "application/x-gzip",
            "Content-Disposition": f"attachment; filename={prefix.rstrip('/')}.tar.gz"})


def _tar_gz(prefix: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(prefix + path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _route(method: str, template: str, handler: _Handler, auth: str, scope: str = "") -> tuple[Any, ...]:
    """auth: "app" (JWT), "install" (an installation token with `scope` permission), "user" (a user
    access token from the OAuth flow), "any"."""
    return method, _compile(template, frozenset({"path", "ref", "basehead"})), handler, auth, scope


_R = "/repos/{owner}/{repo}"
_ROUTES = [
    _route("GET", "/app", FakeGitHub._get_app, "app"),
    _route("POST", "/app/installations/{installation_id}/access_tokens", FakeGitHub._access_token, "app"),
    _route("GET", "/app/hook/deliveries", FakeGitHub._list_deliveries, "app"),
    _route("GET", "/app/hook/deliveries/{delivery_id}", FakeGitHub._get_delivery, "app"),
    _route("POST", "/app/hook/deliveries/{delivery_id}/attempts", FakeGitHub._redeliver, "app"),
    _route("GET", "/rate_limit", FakeGitHub._rate_limit, "any"),
    _route("GET", "/user", FakeGitHub._get_user, "user"),
    _route("GET", f"{_R}/installation", FakeGitHub._repo_installation, "app"),
    _route("POST", f"{_R}/check-runs", FakeGitHub._create_run, "install", "checks"),
    _route("GET", f"{_R}/check-runs/{{check_run_id}}", FakeGitHub._get_run, "install", "checks"),
    _route("PATCH", f"{_R}/check-runs/{{check_run_id}}", FakeGitHub._update_run, "install", "checks"),
    _route("GET", f"{_R}/commits/{{ref}}/check-runs", FakeGitHub._list_runs, "install", "checks"),
    _route("GET", f"{_R}/issues/{{issue_number}}/comments", FakeGitHub._list_comments, "install", "issues"),
    _route("POST", f"{_R}/issues/{{issue_number}}/comments", FakeGitHub._create_comment, "install", "issues"),
    _route("PATCH", f"{_R}/issues/comments/{{comment_id}}", FakeGitHub._update_comment, "install", "issues"),
    _route("POST", f"{_R}/issues/comments/{{comment_id}}/reactions", FakeGitHub._react, "install", "issues"),
    _route("GET", f"{_R}/pulls/{{pull_number}}", FakeGitHub._get_pull, "install", "pull_requests"),
    _route("GET", f"{_R}/pulls/{{pull_number}}/files", FakeGitHub._pull_files, "install", "pull_requests"),
    _route("GET", f"{_R}/compare/{{basehead}}", FakeGitHub._compare, "install", "contents"),
    _route("GET", f"{_R}/contents/{{path}}", FakeGitHub._contents, "install", "contents"),
    _route("GET", f"{_R}/collaborators/{{username}}/permission", FakeGitHub._permission, "install", "metadata"),
    _route("GET", f"{_R}/tarball/{{ref}}", FakeGitHub._tarball, "install", "contents"),
    _route("POST", f"{_R}/statuses/{{sha}}", FakeGitHub._create_status, "install", "statuses"),
]


@contextlib.contextmanager
def serving(gh: FakeGitHub) -> Iterator[FakeGitHub]:
    """`gh` served from an event loop on a thread of its own, for a test without one (a daemon or
    the CLI as a subprocess calls it); `gh.url` is set inside the block."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-github", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(gh.start(), loop).result(10)
        yield gh
    finally:
        asyncio.run_coroutine_threadsafe(gh.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class GitHubWorld:
    """The stand-in (JWTs verified with PUBLIC_PEM, every request checked against SPEC) plus the
    repository and pull request the end-to-end tests talk about."""

    def __init__(self) -> None:
        self.gh = FakeGitHub(app_id=1, public_key_pem=PUBLIC_PEM, spec_path=str(SPEC))
        self.url = ""

    async def start(self, trees: dict[str, dict[str, str]]) -> None:
        self.url = await self.gh.start()
        self.gh.add_repo(REPO, trees, private=True, installation_id=INSTALLATION)

    def pull(self, sha: str, *, pr: int = 1, fork_user: str | None = None, association: str = "OWNER") -> None:
        self.gh.add_pull(REPO, pr, head_sha=sha, base_ref="main",
                         head_repo=f"{fork_user}/widgets" if fork_user else None,
                         author_association=association, user=fork_user or "octocat")

    def runs(self, sha: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.gh.check_runs if sha is None or r["head_sha"] == sha]

    def conclusions(self, sha: str) -> dict[str, str | None]:
        return {r["name"]: r.get("conclusion") for r in self.runs(sha)}

    def completed(self, sha: str, n: int) -> bool:
        """At least `n` check runs on `sha`, all completed."""
        runs = self.runs(sha)
        return len(runs) >= n and all(r["status"] == "completed" for r in runs)

    def assert_no_duplicates(self) -> None:
        keys = [(r["head_sha"], r["name"], r["external_id"]) for r in self.gh.check_runs]
        assert len(keys) == len(set(keys)), f"a check run was created twice: {sorted(keys)}"
        per_pr = [(c["repo"], c["issue_number"]) for c in self.gh.comments]
        assert len(per_pr) == len(set(per_pr)), "a second summary comment was posted"
        assert self.gh.violations == [], self.gh.violations

    async def close(self) -> None:
        await self.gh.close()
