"""Users: read one, merge its ``app_metadata``, count, page, search, list them all.

User ids are always quoted with ``safe=""`` (``samlp|conn|ada@x/y`` must be one path
segment) and quoted and escaped as Lucene phrases in search queries. :meth:`all_users`
pages through tenants of up to 1,000 users and uses an export job (:mod:`.exports`) past
Auth0's paging limit.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import re
import typing as t
from collections.abc import Iterator
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import quote

from ..exceptions import Auth0APIError
from ..timestamps import parse_created_at
from .exports import Exports
from .transport import _invalid_response

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Sequence

logger = logging.getLogger(__package__)

#: Auth0 serves at most this many users per page of ``GET /api/v2/users``.
MAX_PER_PAGE = 100
#: Auth0 serves only the first 1000 users through page/per_page pagination; more need an
#: export job (``POST /api/v2/jobs/users-exports``).
PAGINATION_LIMIT = 1000
#: User ids per search request in :meth:`Users.created_at_of`: one request for
#: up to 50 users keeps the query string far below Auth0's URL limit (414).
SEARCH_BATCH = 50
#: Default fields of :meth:`Users.all_users`: what ``migrate`` needs.
MIGRATION_FIELDS = ("user_id", "created_at", "app_metadata")


@dataclasses.dataclass
class UserListing:
    """Every user of a tenant, iterable once, from :meth:`ManagementClient.all_users`.

    :attr:`total` is the count Auth0 reported before the walk began (``None`` when it
    did not say); users signing up meanwhile may make the walk yield a few more.
    :attr:`source` is ``"paging"`` (``GET /api/v2/users``, tenants of at most 1,000
    users) or ``"export"`` (a user export job); it becomes ``"export"`` when a paged walk
    had to switch because the tenant grew past the paging limit during the walk.
    """

    _users: Iterator[dict[str, t.Any]] = dataclasses.field(repr=False)
    _: dataclasses.KW_ONLY
    total: int | None
    source: str

    def __iter__(self) -> Iterator[dict[str, t.Any]]:
        return self._users


def _lucene_phrase(value: str) -> str:
    """``value`` as a quoted Lucene phrase: backslashes and double quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _root_fields(fields: Iterable[str]) -> list[str]:
    """``app_metadata.signedUp`` -> ``app_metadata``; always with ``user_id``, no repeats."""
    roots: list[str] = ["user_id"]
    for field in [fields] if isinstance(fields, str) else fields:
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root and root not in roots:
            roots.append(root)
    return roots


def _fields_param(fields: Sequence[str] | None) -> dict[str, str]:
    names = [fields] if isinstance(fields, str) else list(fields or ())
    return {"fields": ",".join(names), "include_fields": "true"} if names else {}


def _user_path(user_id: str) -> str:
    # An empty id would turn GET /users/{id} into the user *listing*: refuse it.
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    return f"/api/v2/users/{quote(user_id, safe='')}"


class Users(Exports):
    """The user calls of :class:`..ManagementClient`."""

    def get_user(self, user_id: str, fields: Sequence[str] | None = None) -> dict[str, t.Any]:
        """Read one user (``GET /api/v2/users/{id}``, immediately consistent).

        :param user_id: the user's id, e.g. ``auth0|abc`` (the ID token's ``sub``).
        :param fields: only these fields, e.g. ``["app_metadata", "created_at"]``:
            smaller responses, and no profile data the caller does not need.
        :raises Auth0APIError: ``404`` with ``error_code == "inexistent_user"`` when
            the user does not exist; ``retryable`` tells whether a later retry may help.
        :raises Auth0ConnectionError: no response from Auth0.
        """
        return self._object("GET", _user_path(user_id), params=_fields_param(fields))

    def update_app_metadata(self, user_id: str, values: Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Merge ``values`` into the user's ``app_metadata`` and return the updated user.

        Auth0 merges ``app_metadata`` at the top level only: keys not in ``values``
        are kept, a key set to ``None`` is deleted, and a nested object replaces the
        old one as a whole. The same call is therefore safe to repeat.

        :raises ValueError: ``values`` is empty. ``{"app_metadata": {}}`` tells Auth0
            to delete *all* of the user's app_metadata, which is never what a caller of
            a "merge" means.
        """
        if not isinstance(values, Mapping):
            raise TypeError("values must be a mapping")
        if not values:
            raise ValueError(
                "refusing to send an empty app_metadata: Auth0 would delete all of the "
                "user's app_metadata"
            )
        path = _user_path(user_id)
        return self._object("PATCH", path, json_body={"app_metadata": dict(values)})

    def iter_users(
        self, *, per_page: int = MAX_PER_PAGE, fields: Sequence[str] | None = None
    ) -> Iterator[dict[str, t.Any]]:
        """Yield every user of the tenant, page by page (for ``backfill``).

        Pages are requested lazily, sorted by ``created_at`` so that users signing up
        during the walk do not shift the pages already read. Auth0 serves only the
        first 1000 users this way; with more, a warning is logged and Auth0's ``400``
        for the page past the limit is raised: use a user export job instead.

        :param per_page: users per request, 1 to 100.
        :param fields: only these fields of each user (include ``user_id``).
        """
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}")
        params = {
            "per_page": str(per_page),
            "include_totals": "true",
            "sort": "created_at:1",
            **_fields_param(fields),
        }
        return self._iter_pages(params, per_page)

    def count_users(self) -> int:
        """How many users the tenant has (``include_totals`` of one small page)."""
        params = {"page": "0", "per_page": "1", "include_totals": "true"}
        body = self._call("GET", "/api/v2/users", params={**params, **_fields_param(["user_id"])})
        total = body.get("total") if isinstance(body, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise _invalid_response("GET /api/v2/users?include_totals=true did not return a total")
        return total

    def all_users(
        self,
        fields: Sequence[str] = MIGRATION_FIELDS,
        *,
        poll_interval: float = 2.0,
        timeout: float = 3600.0,
    ) -> UserListing:
        """Every user of the tenant, whatever its size, one dict at a time.

        Up to 1,000 users are paged through ``GET /api/v2/users``; a bigger tenant needs a
        user export job (:meth:`export_users`, JSON format). Either way each user is a
        dict with the *root* fields asked for: ``app_metadata.signedUp`` asks for the whole
        ``app_metadata`` object, so both sources give ``user["app_metadata"]["signedUp"]``.
        ``user_id`` is always included.

        Nothing is requested until the listing is iterated, except the count.
        """
        roots = _root_fields(fields)
        total = self.count_users()
        # A JSON export (the default format): nested objects as paging gives them.
        export = functools.partial(
            self.export_users, roots, poll_interval=poll_interval, timeout=timeout
        )
        if total > PAGINATION_LIMIT:
            return UserListing(export(), total=total, source="export")
        listing = UserListing(iter(()), total=total, source="paging")
        listing._users = self._page_or_export(listing, roots, export)
        return listing

    def _page_or_export(
        self,
        listing: UserListing,
        roots: list[str],
        export: Callable[[], Iterator[dict[str, t.Any]]],
    ) -> Iterator[dict[str, t.Any]]:
        """Page through the users; if the tenant grew past the paging limit meanwhile,
        finish with an export job, skipping the users already yielded."""
        seen: set[str] = set()
        try:
            for user in self.iter_users(fields=roots):
                user_id = user.get("user_id")
                if isinstance(user_id, str):
                    seen.add(user_id)
                yield user
            return
        except Auth0APIError as exc:
            if exc.status_code != 400 or len(seen) < PAGINATION_LIMIT - MAX_PER_PAGE:
                raise
        # The page past the limit: switch to an export (outside the except block).
        logger.info(
            "The tenant grew past %d users during the walk; finishing with an export job",
            PAGINATION_LIMIT,
        )
        listing.source = "export"
        for user in export():
            if user.get("user_id") not in seen:
                yield user

    def created_at_of(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        """The creation time of each user, by user id, in few requests.

        One search request (``q=user_id:("a" OR "b" ...)``, search engine v3, only
        ``user_id`` and ``created_at``) per 50 ids; ids are quoted and escaped for Lucene,
        so ``|``, spaces or quotes in an id cannot change the query. Users that do not
        exist (deleted since) are absent from the result; an unparseable ``created_at``
        too. Times are timezone-aware, UTC.
        """
        if isinstance(user_ids, str):
            raise TypeError("user_ids must be a sequence of ids, not one string")
        wanted = list(dict.fromkeys(uid for uid in user_ids if isinstance(uid, str) and uid))
        found: dict[str, datetime] = {}
        for start in range(0, len(wanted), SEARCH_BATCH):
            chunk = wanted[start : start + SEARCH_BATCH]
            if len(chunk) == 1:
                query = "user_id:" + _lucene_phrase(chunk[0])
            else:
                query = "user_id:(" + " OR ".join(_lucene_phrase(uid) for uid in chunk) + ")"
            params = {"q": query, "search_engine": "v3", "page": "0", "per_page": str(SEARCH_BATCH)}
            users, _ = self._users_page({**params, **_fields_param(["user_id", "created_at"])})
            members = set(chunk)
            for user in users:
                if not isinstance(user, dict) or user.get("user_id") not in members:
                    continue
                moment = parse_created_at(user.get("created_at"))
                if moment is None:
                    logger.warning("Auth0 returned a user without a usable created_at")
                    continue
                found[user["user_id"]] = moment
        return found

    def _users_page(self, params: Mapping[str, str]) -> tuple[list[t.Any], t.Any]:
        """The users and the total of one ``GET /api/v2/users``: ``{users, total}``, or a
        bare list (no total) when ``include_totals`` was ignored."""
        body = self._call("GET", "/api/v2/users", params=params)
        users, total = (
            (body.get("users"), body.get("total")) if isinstance(body, dict) else (body, None)
        )
        if not isinstance(users, list):
            raise _invalid_response("GET /api/v2/users did not return a list of users")
        return users, total

    def _iter_pages(self, params: dict[str, str], per_page: int) -> Iterator[dict[str, t.Any]]:
        seen = 0
        for page in itertools.count():
            users, total = self._users_page({**params, "page": str(page)})
            if page == 0 and isinstance(total, int) and total > PAGINATION_LIMIT:
                logger.warning(
                    "Auth0 reports %d users; the Management API pages through the first %d "
                    "only: use a user export job for the rest",
                    total,
                    PAGINATION_LIMIT,
                )
            for user in users:
                if isinstance(user, dict):
                    yield user
            seen += len(users)
            logger.debug("Auth0 users page %d: %d users (%d so far)", page, len(users), seen)
            if len(users) < per_page or (isinstance(total, int) and seen >= total):
                return
