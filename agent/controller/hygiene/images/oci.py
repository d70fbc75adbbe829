"""Any OCI distribution registry as an image registry for the stale-images job, over its HTTP API.

Catalog and tag lists are paged with ``n`` and the ``Link`` header; tags are resolved with a
manifest HEAD that accepts every manifest type; manifests and image configs are read by
digest (immutable, so cached) for children, sizes and creation times; deletes are by digest.
Authentication follows the registry's ``WWW-Authenticate`` challenge: Basic, or the Bearer
token flow (realm, service, scope), with the configured credentials where there are any.

The distribution API records neither push nor pull times, so the age of an image here is its
build time (image config ``created`` or the ``org.opencontainers.image.created`` annotation).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from agent.controller.hygiene.images.registry import (
    CREATED_ANNOTATION,
    IMAGE_CONFIG_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    AgeBasis,
    ImageFacts,
    Manifest,
    ManifestSummary,
    RegistryError,
    parse_time,
    summarize,
)

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_AUTH_KEYS = frozenset({"username", "password_env", "password_file"})
_GLOB_CHARS = frozenset("*?[")


def credentials_from(auth: Mapping[str, str], *, environ: Mapping[str, str] | None = None
                     ) -> tuple[str, str] | None:
    """``registries[].auth`` -> (username, password). Passwords come from the environment
    (``password_env``) or a mounted file (``password_file``), never from the config text."""
    unknown = set(auth) - _AUTH_KEYS
    if unknown:
        known = ", ".join(sorted(_AUTH_KEYS))
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}; known: {known}")
    if not auth:
        return None
    env = os.environ if environ is None else environ
    if "username" not in auth:
        raise ValueError("username is required with password_env or password_file")
    if "password_env" in auth:
        if auth["password_env"] not in env:
            raise ValueError(f"password_env: ${auth['password_env']} is not set")
        password = env[auth["password_env"]]
    elif "password_file" in auth:
        try:
            password = Path(auth["password_file"]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"password_file: {exc.strerror or exc}") from exc
    else:
        raise ValueError("needs password_env or password_file with username")
    return auth["username"], password


def parse_challenge(header: str) -> tuple[str, dict[str, str]] | None:
    """``Bearer realm="...",service="...",scope="..."`` -> ("bearer", params)."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE_PARAM.findall(rest)}


class _Cache:
    """Manifests and configs by digest: content-addressed, so never stale, only bounded."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class OciRegistry:
    """One registry reached over the distribution HTTP API (v2)."""

    records_pulls = False
    age_basis: AgeBasis = "created"

    def __init__(self, url: str, *, repositories: Sequence[str] = (),
                 credentials: tuple[str, str] | None = None,
                 session: requests.Session | None = None, timeout: float = 30.0,
                 page_size: int = 1000, cache_size: int = 50_000) -> None:
        base = url if "://" in url else f"https://{url}"
        self._base = base.rstrip("/")
        self.name = urlsplit(self._base).netloc
        self._patterns = tuple(repositories)
        self._credentials = credentials
        self._session = session or requests.Session()
        self._timeout = timeout
        self._page_size = page_size
        self._cache = _Cache(cache_size)
        self._tokens: dict[str, str] = {}  # catalog or repository -> bearer token
        self._scopes: dict[str, set[str]] = {}
        self._basic = False

    # ------------------------------------------------------------------ HTTP and auth

    def _request(self, method: str, path_or_url: str, *, key: str,
                 headers: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
                 data: bytes | None = None) -> requests.Response:
        url = urljoin(self._base + "/", path_or_url)
        sent = dict(headers or {})
        response = self._send(method, url, key=key, headers=sent, params=params, data=data)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if challenge is None:
                raise RegistryError(f"{method} {url}: HTTP 401 without a challenge",
                                    code="UNAUTHORIZED")
            self._authorize(key, *challenge)
            response = self._send(method, url, key=key, headers=sent, params=params, data=data)
            if response.status_code == 401:
                raise RegistryError(f"{method} {url}: HTTP 401 after authenticating "
                                    f"({challenge[0]}); check registries[].auth",
                                    code="UNAUTHORIZED")
        return response

    def _send(self, method: str, url: str, *, key: str, headers: dict[str, str],
              params: Mapping[str, Any] | None, data: bytes | None) -> requests.Response:
        sent = dict(headers)
        if key in self._tokens:
            sent["Authorization"] = f"Bearer {self._tokens[key]}"
        auth = self._credentials if self._basic and key not in self._tokens else None
        try:
            return self._session.request(method, url, headers=sent, params=params, data=data,
                                         auth=auth, timeout=self._timeout,
                                         allow_redirects=method in ("GET", "HEAD"))
        except requests.RequestException as exc:
            raise RegistryError(f"{method} {url}: {exc}", code="UNREACHABLE") from exc

    def _authorize(self, key: str, scheme: str, params: dict[str, str]) -> None:
        if scheme == "basic":
            if self._credentials is None:
                raise RegistryError(f"{self.name} asks for credentials; set registries[].auth",
                                    code="UNAUTHORIZED")
            self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.name}: unsupported authentication challenge {scheme!r}",
                                code="UNAUTHORIZED")
        scopes = self._scopes.setdefault(key, set())
        if params.get("scope"):
            scopes.update(params["scope"].split(" "))
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query.extend(("scope", scope) for scope in sorted(scopes))
        try:
            response = self._session.get(params["realm"], params=query, auth=self._credentials,
                                         timeout=self._timeout)
        except requests.RequestException as exc:
            raise RegistryError(f"token endpoint {params['realm']}: {exc}",
                                code="UNREACHABLE") from exc
        if response.status_code != 200:
            raise RegistryError(f"token endpoint {params['realm']}: HTTP {response.status_code}",
                                code="UNAUTHORIZED")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token endpoint {params['realm']}: no token in the answer",
                                code="UNAUTHORIZED")
        self._tokens[key] = token

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code < 400:
            return
        code = None
        try:
            errors = response.json().get("errors") or []
            code = errors[0].get("code") if errors else None
        except (ValueError, AttributeError):
            pass
        raise RegistryError(f"{what}: HTTP {response.status_code} {code or ''}".rstrip(),
                            code=code or f"HTTP_{response.status_code}")

    def _paged(self, path: str, field: str, *, key: str) -> Iterator[str]:
        """Every value of a paged list. A page after the first that fails, 404 included,
        fails the listing: a part of a list read as all of it would show tags missing."""
        url: str | None = path
        params: dict[str, Any] | None = {"n": self._page_size}
        first = True
        while url:
            response = self._request("GET", url, key=key, params=params)
            if response.status_code == 404 and field == "tags" and first:
                return  # the repository is gone (NAME_UNKNOWN): no tags
            self._check(response, f"GET {url}" if first else
                        f"GET {url} (a later page: the listing stopped part-way)")
            first = False
            try:
                values = response.json().get(field)
            except ValueError as exc:
                raise RegistryError(f"GET {url}: not JSON", code="BAD_RESPONSE") from exc
            yield from (str(v) for v in values or [])  # a repository with no tags: null
            link = response.links.get("next", {}).get("url")
            url, params = (link, None) if link else (None, None)

    # ------------------------------------------------------------------ listing

    def repositories(self) -> list[str]:
        if self._patterns and not any(_GLOB_CHARS & set(p) for p in self._patterns):
            # Named repositories: no catalog call (many registries restrict or disable it).
            return sorted(set(self._patterns))
        names = self._paged("/v2/_catalog", "repositories", key="catalog")
        return sorted(n for n in names
                      if not self._patterns or any(fnmatch.fnmatchcase(n, p)
                                                   for p in self._patterns))

    def tags(self, repository: str) -> list[str]:
        # Paged like the catalog where the registry pages tags (distribution 2.8 sends all).
        return sorted(self._paged(f"/v2/{repository}/tags/list", "tags", key=repository))

    def resolve(self, repository: str, reference: str) -> tuple[str, str] | None:
        """A tag or digest -> (digest, media type) by HEAD; None when it does not exist."""
        response = self._request("HEAD", f"/v2/{repository}/manifests/{reference}",
                                 key=repository, headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            return None
        self._check(response, f"HEAD {repository}:{reference}")
        digest = response.headers.get("Docker-Content-Digest")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest:  # some registries answer HEAD without it: read the manifest
            manifest = self._get_manifest(repository, reference)
            if manifest is None:
                return None
            return manifest.digest, manifest.media_type
        return digest, media_type

    def images(self, repository: str) -> list[ImageFacts]:
        by_digest: dict[str, list[str]] = {}
        media: dict[str, str] = {}
        for tag in self.tags(repository):
            resolved = self.resolve(repository, tag)
            if resolved is None:
                continue  # deleted between the list and the HEAD
            by_digest.setdefault(resolved[0], []).append(tag)
            media[resolved[0]] = resolved[1]
        facts: dict[str, ImageFacts] = {}
        for digest in sorted(by_digest):
            self._collect(repository, digest, tuple(sorted(by_digest[digest])), facts)
        return list(facts.values())

    def _collect(self, repository: str, digest: str, tags: tuple[str, ...],
                 facts: dict[str, ImageFacts]) -> ImageFacts | None:
        if digest in facts:
            if tags and not facts[digest].tags:  # reached first as a child, tagged as well
                facts[digest] = dataclasses.replace(facts[digest], tags=tags)
            return facts[digest]
        summary, media_type = self._summary(repository, digest)
        if summary is None:
            return None
        created = parse_time(summary.annotations.get(CREATED_ANNOTATION))
        size = summary.size_bytes
        if media_type in INDEX_TYPES:
            child_facts = [self._collect(repository, child, (), facts)
                           for child in summary.children]
            known = [c for c in child_facts if c is not None]
            size = sum(c.size_bytes or 0 for c in known)
            if created is None:
                times = [c.created_at for c in known if c.created_at is not None]
                created = max(times) if times else None
        elif created is None and summary.config_digest and \
                summary.config_media_type in IMAGE_CONFIG_TYPES:
            created = self._config_created(repository, summary.config_digest)
        fact = ImageFacts(
            repository=repository, digest=digest, tags=tags, media_type=media_type,
            pushed_at=None, created_at=created, last_pulled_at=None, size_bytes=size,
            children=summary.children, subject=summary.subject, annotations=summary.annotations)
        facts[digest] = fact
        return fact

    def _summary(self, repository: str, digest: str) -> tuple[ManifestSummary | None, str]:
        cached = self._cache.get(f"manifest:{digest}")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        manifest = self._get_manifest(repository, digest)
        if manifest is None:
            return None, ""
        media_type = manifest.media_type or str(manifest.parsed().get("mediaType") or "")
        result = (summarize(manifest.parsed(), media_type), media_type)
        self._cache.put(f"manifest:{digest}", result)
        return result

    def _config_created(self, repository: str, digest: str) -> datetime | None:
        cached = self._cache.get(f"config:{digest}")
        if cached is not None:
            return parse_time(cached)
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", key=repository)
        if response.status_code == 404:
            return None
        self._check(response, f"GET blob {repository}@{digest}")
        try:
            created = str(json.loads(response.content).get("created") or "")
        except (ValueError, AttributeError):
            created = ""
        self._cache.put(f"config:{digest}", created)
        return parse_time(created)

    def _get_manifest(self, repository: str, reference: str) -> Manifest | None:
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}",
                                 key=repository, headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            return None
        self._check(response, f"GET manifest {repository}:{reference}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(response.content, media_type)

    # ------------------------------------------------------------------ the rest of the adapter

    def repository_tags(self, repository: str) -> Mapping[str, str]:
        return {}  # the distribution API has no repository metadata

    def manifest(self, repository: str, digest: str) -> Manifest | None:
        return self._get_manifest(repository, digest)

    def delete(self, repository: str, digests: Sequence[str]) -> None:
        for digest in digests:
            response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}",
                                     key=repository)
            if response.status_code == 404:
                continue  # already deleted
            if response.status_code == 405:
                raise RegistryError(f"{self.name} does not allow deletes (distribution: "
                                    "storage.delete.enabled)", code="UNSUPPORTED")
            self._check(response, f"DELETE {repository}@{digest}")

    def put_manifest(self, repository: str, manifest: Manifest, *, tag: str | None) -> None:
        reference = tag or manifest.digest
        response = self._request("PUT", f"/v2/{repository}/manifests/{reference}",
                                 key=repository, data=manifest.body,
                                 headers={"Content-Type": manifest.media_type})
        self._check(response, f"PUT manifest {repository}:{reference}")
