"""FakeGitHub itself: its validator and auth can fail, and its answers look like GitHub's."""
from __future__ import annotations

import base64
import io
import subprocess
import tarfile
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import DATA
from fake_github import FakeGitHub

APP_ID = 7
PRIVATE_KEY = (DATA / "keys" / "app.pem").read_text()
SHA = "0123456789abcdef0123456789abcdef01234567"


def app_jwt(*, key: str = PRIVATE_KEY, iss: int = APP_ID, lifetime: int = 600) -> str:
    now = int(time.time()) - 60
    return jwt.encode({"iat": now, "exp": now + lifetime, "iss": str(iss)}, key, algorithm="RS256")


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    gh = FakeGitHub(app_id=APP_ID, public_key_pem=(DATA / "keys" / "app.pub.pem").read_text(),
                    spec_path=str(DATA / "rest-subset.json"))
    await gh.start()
    gh.add_repo("octo/hello", {SHA: {"README.md": "hi\n", ".lightning/workflows/ci.yml": "run: pytest\n",
                                     "bin/tool": b"\x00\x01"}})
    gh.add_repo("octo/other", {SHA: {"x": "y"}})
    gh.add_pull("octo/hello", 5, head_sha=SHA)
    yield gh
    await gh.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def mint(http: aiohttp.ClientSession, fake: FakeGitHub, body: dict | None = None) -> str:
    async with http.post(f"{fake.url}/app/installations/1/access_tokens", json=body,
                         headers={"Authorization": f"Bearer {app_jwt()}"}) as r:
        assert r.status == 201
        return (await r.json())["token"]


async def test_validator_rejects_a_bad_body_and_an_unknown_path(fake: FakeGitHub, http: aiohttp.ClientSession) -> None:
    token = await mint(http, fake)
    auth = {"Authorization": f"token {token}"}
    async with http.post(f"{fake.url}/repos/octo/hello/check-runs", json={"head_sha": SHA}, headers=auth) as r:
        assert r.status == 422
    async with http.get(f"{fake.url}/repos/octo/hello/secrets", headers=auth) as r:
        assert r.status == 404
    async with http.get(f"{fake.url}/repos/octo/hello/commits/{SHA}/check-runs?status=done&bogus=1",
                        headers=auth) as r:
        assert r.status == 200
    assert len(fake.violations) == 4
    assert "'name' is a required property" in fake.violations[0]
    assert "no such operation" in fake.violations[1]
    assert "'done' is not one of" in fake.violations[2]
    assert "unknown query parameter 'bogus'" in fake.violations[3]
    assert fake.check_runs == []


@pytest.mark.parametrize("make", [
    lambda: app_jwt(key=rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()),
    lambda: app_jwt(iss=APP_ID + 1),
    lambda: app_jwt(lifetime=3600),
    lambda: "not-a-jwt",
], ids=["other-key", "other-app", "too-long", "garbage"])
async def test_bad_app_jwt_is_refused(fake: FakeGitHub, http: aiohttp.ClientSession, make) -> None:
    async with http.get(f"{fake.url}/app", headers={"Authorization": f"Bearer {make()}"}) as r:
        assert r.status == 401
    async with http.get(f"{fake.url}/app", headers={"Authorization": f"Bearer {app_jwt()}"}) as r:
        assert r.status == 200 and (await r.json())["id"] == APP_ID


async def test_tokens_are_checked_with_their_scope(fake: FakeGitHub, http: aiohttp.ClientSession) -> None:
    scoped = await mint(http, fake, {"repositories": ["hello"], "permissions": {"contents": "read"}})
    assert fake.tokens[scoped]["permissions"] == {"contents": "read"}
    auth = {"Authorization": f"token {scoped}"}
    async with http.get(f"{fake.url}/repos/octo/hello/contents/README.md", headers=auth) as r:
        assert r.status == 200
    async with http.post(f"{fake.url}/repos/octo/hello/check-runs", json={"name": "x", "head_sha": SHA},
                         headers=auth) as r:
        assert r.status == 403
    async with http.get(f"{fake.url}/repos/octo/other/contents/x", headers=auth) as r:
        assert r.status == 404
    async with http.get(f"{fake.url}/repos/octo/hello/contents/README.md",
                        headers={"Authorization": "token ghs_forged"}) as r:
        assert r.status == 401
    async with http.post(f"{fake.url}/app/installations/1/access_tokens", json={"repositories": ["nope"]},
                         headers={"Authorization": f"Bearer {app_jwt()}"}) as r:
        assert r.status == 422
    assert fake.violations == []


async def test_check_runs_lifecycle_and_list_filters(fake: FakeGitHub, http: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"token {await mint(http, fake)}"}
    base = f"{fake.url}/repos/octo/hello"
    ids = []
    for name, ext in (("lint", "k1"), ("test", "k2"), ("test", "k3")):
        async with http.post(f"{base}/check-runs", json={"name": name, "head_sha": SHA, "external_id": ext},
                             headers=auth) as r:
            assert r.status == 201
            ids.append((await r.json())["id"])
    async with http.patch(f"{base}/check-runs/{ids[0]}", json={"conclusion": "success", "output": {
            "title": "ok", "summary": "fine"}}, headers=auth) as r:
        run = await r.json()
        assert run["status"] == "completed" and run["completed_at"] and run["output"]["title"] == "ok"

    async def listing(query: str) -> list[tuple[str, str]]:
        async with http.get(f"{base}/commits/{SHA}/check-runs?{query}", headers=auth) as r:
            return [(c["name"], c["external_id"]) for c in (await r.json())["check_runs"]]

    assert sorted(await listing("")) == [("lint", "k1"), ("test", "k3")]          # latest per name
    assert sorted(await listing("filter=all")) == [("lint", "k1"), ("test", "k2"), ("test", "k3")]
    assert await listing("check_name=lint") == [("lint", "k1")]
    assert sorted(await listing("status=queued&filter=all")) == [("test", "k2"), ("test", "k3")]
    async with http.get(f"{base}/commits/{SHA}/check-runs?filter=all&per_page=2", headers=auth) as r:
        assert 'rel="next"' in r.headers["Link"] and "page=2" in r.headers["Link"]
    assert [len(c["history"]) for c in fake.check_runs] == [2, 1, 1]
    async with http.patch(f"{base}/check-runs/{ids[1]}", json={"status": "completed"}, headers=auth) as r:
        assert r.status == 422  # GitHub needs a conclusion to complete a run
    assert len(fake.violations) == 1


async def test_comments_reactions_permission_pulls(fake: FakeGitHub, http: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"token {await mint(http, fake)}"}
    base = f"{fake.url}/repos/octo/hello"
    async with http.post(f"{base}/issues/5/comments", json={"body": "<!-- litci -->"}, headers=auth) as r:
        c = await r.json()
        assert r.status == 201 and c["user"]["type"] == "Bot" and c["html_url"].endswith(f"#issuecomment-{c['id']}")
    async with http.patch(f"{base}/issues/comments/{c['id']}", json={"body": "v2"}, headers=auth) as r:
        assert (await r.json())["body"] == "v2"
    for expected in (201, 200):  # the same reaction twice: GitHub answers 200 the second time
        async with http.post(f"{base}/issues/comments/{c['id']}/reactions", json={"content": "+1"},
                             headers=auth) as r:
            assert r.status == expected
    assert fake.comments[0]["history"] == ["<!-- litci -->", "v2"] and len(fake.reactions) == 1
    # A user's command comment reached litbotd in a webhook only: it can still get a reaction.
    async with http.post(f"{base}/issues/comments/987654/reactions", json={"content": "confused"},
                         headers=auth) as r:
        assert r.status == 201
    assert [(x["comment_id"], x["content"]) for x in fake.reactions][-1] == (987654, "confused")
    fake.set_permission("octo/hello", "alice", "maintain")
    async with http.get(f"{base}/collaborators/alice/permission", headers=auth) as r:
        assert (await r.json())["permission"] == "write"
    async with http.get(f"{base}/collaborators/mallory/permission", headers=auth) as r:
        # as on GitHub: on a public repository everyone reads (a stranger's permission is "read")
        assert (await r.json())["permission"] == "read"
    async with http.get(f"{base}/pulls/5", headers=auth) as r:
        pr = await r.json()
        assert pr["head"]["sha"] == SHA and pr["base"]["ref"] == "main" and pr["author_association"] == "OWNER"
    async with http.get(f"{base}/pulls/5/files", headers=auth) as r:
        assert sorted(f["filename"] for f in await r.json()) == [".lightning/workflows/ci.yml", "README.md",
                                                                "bin/tool"]
    assert fake.violations == []


async def test_contents_and_tarball_from_memory(fake: FakeGitHub, http: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"token {await mint(http, fake)}"}
    base = f"{fake.url}/repos/octo/hello"
    async with http.get(f"{base}/contents/README.md?ref={SHA}", headers=auth) as r:
        f = await r.json()
        assert f["type"] == "file" and base64.b64decode(f["content"]) == b"hi\n"
    async with http.get(f"{base}/contents/bin/tool?ref={SHA}",
                        headers={**auth, "Accept": "application/vnd.github.raw+json"}) as r:
        assert await r.read() == b"\x00\x01"
    async with http.get(f"{base}/contents/.lightning?ref={SHA}", headers=auth) as r:
        assert [(e["name"], e["type"]) for e in await r.json()] == [("workflows", "dir")]
    async with http.get(f"{base}/contents/missing.txt?ref={SHA}", headers=auth) as r:
        assert r.status == 404
    async with http.get(f"{base}/tarball/{SHA}", headers=auth, allow_redirects=False) as r:
        assert r.status == 302 and "/_codeload/" in r.headers["Location"]
    async with http.get(f"{base}/tarball/{SHA}", headers=auth) as r:
        data = await r.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == [f"octo-hello-{SHA[:7]}/{p}" for p in
                                          (".lightning/workflows/ci.yml", "README.md", "bin/tool")]
    assert fake.violations == []


async def test_contents_and_tarball_from_a_git_repository(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".litci.yaml").write_text("run: echo hi\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    fake = FakeGitHub(app_id=APP_ID, spec_path=str(DATA / "rest-subset.json"))
    await fake.start()
    try:
        fake.add_repo("octo/git", git_dir=str(repo))
        auth = {"Authorization": "token anything"}  # no public key: credentials are not checked
        async with http.get(f"{fake.url}/repos/octo/git/contents/.litci.yaml?ref={head}",
                            headers={**auth, "Accept": "application/vnd.github.raw+json"}) as r:
            assert await r.read() == b"run: echo hi\n"
        async with http.get(f"{fake.url}/repos/octo/git/tarball/{head}", headers=auth) as r:
            with tarfile.open(fileobj=io.BytesIO(await r.read()), mode="r:gz") as tar:
                assert f"octo-git-{head[:7]}/.litci.yaml" in tar.getnames()
        assert fake.violations == []
    finally:
        await fake.close()


async def test_redelivery_attempt_is_recorded_as_a_new_delivery(fake: FakeGitHub, http: aiohttp.ClientSession) -> None:
    d = fake.add_delivery("g", status_code=502)
    async with http.post(f"{fake.url}/app/hook/deliveries/{d['id']}/attempts",
                         headers={"Authorization": f"Bearer {app_jwt()}"}) as r:
        assert r.status == 202
    async with http.get(f"{fake.url}/app/hook/deliveries?status=success",
                        headers={"Authorization": f"Bearer {app_jwt()}"}) as r:
        listed = await r.json()
    assert [(x["guid"], x["redelivery"], x["status_code"]) for x in listed] == [("g", True, 200)]
    assert fake.violations == []


async def test_injected_fault_answers_the_next_matching_requests(fake: FakeGitHub,
                                                                 http: aiohttp.ClientSession) -> None:
    fake.inject("GET", r"^/rate_limit$", 429, headers={"Retry-After": 3}, times=2)
    statuses = []
    for _ in range(3):
        async with http.get(f"{fake.url}/rate_limit") as r:
            statuses.append((r.status, r.headers.get("Retry-After")))
    assert statuses == [(429, "3"), (429, "3"), (200, None)]
    assert fake.count("GET", r"^/rate_limit$") == 3


async def test_check_run_annotations_are_appended_fifty_at_most(fake: FakeGitHub, http: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"token {await mint(http, fake)}"}
    item = {"path": "README.md", "start_line": 1, "end_line": 1, "annotation_level": "notice", "message": "m"}
    output = {"title": "t", "summary": "s"}
    async with http.post(f"{fake.url}/repos/octo/hello/check-runs", headers=auth,
                         json={"name": "ci", "head_sha": SHA, "output": {**output, "annotations": [item] * 50}}) as r:
        assert r.status == 201
        rid = (await r.json())["id"]
    url = f"{fake.url}/repos/octo/hello/check-runs/{rid}"
    async with http.patch(url, headers=auth, json={"output": {**output, "annotations": [item] * 51}}) as r:
        assert r.status == 422  # GitHub's limit: nothing of the request is applied
    async with http.patch(url, headers=auth, json={"output": {**output, "annotations": [item] * 3}}) as r:
        assert r.status == 200 and (await r.json())["output"]["annotations_count"] == 53
    async with http.patch(url, headers=auth, json={"output": {"title": "new", "summary": "s"}}) as r:
        assert (await r.json())["output"]["annotations_count"] == 53  # an update without any keeps them
    assert len(fake.check_runs[0]["annotations"]) == 53
    # GitHub's description says so too (maxItems 50): the validator flags the request as well.
    assert len(fake.violations) == 1 and "annotations" in fake.violations[0] and "too long" in fake.violations[0]


async def test_pull_files_and_compare_page_and_cap_like_github(http: aiohttp.ClientSession) -> None:
    gh = FakeGitHub(app_id=APP_ID, public_key_pem=(DATA / "keys" / "app.pub.pem").read_text(),
                    spec_path=str(DATA / "rest-subset.json"))
    await gh.start()
    base_sha, head_sha, big_sha = "1" * 40, "2" * 40, "3" * 40
    tree = {"src/a.py": "a", "docs/x.md": "x"}
    gh.add_repo("octo/hello", {base_sha: tree, head_sha: {**tree, "docs/x.md": "y", "docs/new.md": "n"},
                               big_sha: {**tree, **{f"gen/{i:04}.txt": "" for i in range(3005)}}})
    gh.add_pull("octo/hello", 5, head_sha=head_sha, base_sha=base_sha)
    gh.add_pull("octo/hello", 6, head_sha=big_sha, base_sha=base_sha)
    try:
        auth = {"Authorization": f"token {await mint(http, gh)}"}
        base = f"{gh.url}/repos/octo/hello"
        async with http.get(f"{base}/pulls/5/files", params={"per_page": 1}, headers=auth) as r:
            assert [f["filename"] for f in await r.json()] == ["docs/new.md"] and 'rel="next"' in r.headers["Link"]
        async with http.get(f"{base}/pulls/5/files", params={"per_page": 1, "page": 2}, headers=auth) as r:
            assert [f["filename"] for f in await r.json()] == ["docs/x.md"] and 'rel="next"' not in r.headers["Link"]
        names: list[str] = []
        for page in range(1, 40):
            async with http.get(f"{base}/pulls/6/files", params={"per_page": 100, "page": page}, headers=auth) as r:
                got = await r.json()
            if not got:
                break
            names += [f["filename"] for f in got]
        assert len(names) == 3000  # GitHub's cap, not the 3005 the PR changes
        async with http.get(f"{base}/compare/{base_sha}...{head_sha}", headers=auth) as r:
            body = await r.json()
            assert r.status == 200 and sorted(f["filename"] for f in body["files"]) == ["docs/new.md", "docs/x.md"]
        async with http.get(f"{base}/compare/{base_sha}...{big_sha}", headers=auth) as r:
            assert len((await r.json())["files"]) == 300
        async with http.get(f"{base}/compare/{base_sha}...{'9' * 40}", headers=auth) as r:
            assert r.status == 404
        assert gh.violations == []
        async with http.get(f"{base}/compare/{base_sha}...{head_sha}", params={"sha": "x"}, headers=auth):
            pass
        assert gh.violations  # validated against the operation: it takes no `sha` parameter
    finally:
        await gh.close()
