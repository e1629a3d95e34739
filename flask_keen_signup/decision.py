"""The signup decision: is this user new, returning, or created before ``SINCE``?

A pure function in the style of :mod:`.events`: the facts in, a verdict out, nothing
read or written. Every path asks it: a login (:class:`~.tracker.Tracker`, in background
and sync mode and inside the app's transaction) and the sender's hooks
(:class:`~.hooks.MarkerHooks`). What each path does with the verdict (mark, skip, queue,
send) stays with the path; the rule lives here, once.
"""

from __future__ import annotations

import datetime as dt
import enum
import typing as t

from .events import parse_created_at
from .stores import MarkerState


class Verdict(enum.Enum):
    """What a login (or a queued candidate) is."""

    #: Known already: marked here or in Auth0, or claimed and durably queued.
    RETURNING = "returning"
    #: Created before ``KEEN_SIGNUP_SINCE``: marked, never reported.
    MARKED_ONLY = "marked_only"
    #: A signup: report it.
    SIGNUP = "signup"


def decide(
    *,
    since: dt.datetime | None,
    created_at: dt.datetime | None = None,
    known: bool = False,
    marker: MarkerState | None = None,
    pending_is_final: bool = True,
) -> Verdict:
    """The verdict on one user from what the caller knows so far.

    :param since: ``KEEN_SIGNUP_SINCE``; ``None``: every new user is a signup.
    :param created_at: the user's creation time, if known (ID token, Auth0).
    :param known: remembered by this process, marked by a claim of the ID token, or
        marked in Auth0's ``app_metadata``.
    :param marker: the user's marker in the ledger, if read.
    :param pending_is_final: a *pending* marker means "durably queued" (background
        mode, the outbox); in sync mode it may belong to a request that died mid-send,
        and the claim decides whether it is stale.

    A known user wins over ``SINCE``: a returning user created long ago is only
    returning (nothing to write); an unknown one created before ``SINCE`` is marked.
    """
    if known or marker is MarkerState.CONFIRMED:
        return Verdict.RETURNING
    if marker is MarkerState.PENDING and pending_is_final:
        return Verdict.RETURNING
    if since is not None and created_at is not None and created_at < since:
        return Verdict.MARKED_ONLY
    return Verdict.SIGNUP


def created_at_from_claims(
    claims: t.Mapping[str, t.Any], name: str | None = None
) -> dt.datetime | None:
    """A creation time carried in the ID token, if an Auth0 Action put one there.

    The claim ``name`` (``KEEN_SIGNUP_CREATED_AT_CLAIM``) when given, else ``created_at``
    or any namespaced claim ending in ``/created_at``.
    """
    value = claims.get(name) if name else None
    if value is None:
        value = claims.get("created_at")
    if value is None:
        for claim, candidate in claims.items():
            if claim.endswith("/created_at"):
                value = candidate
                break
    return parse_created_at(value) if value is not None else None


__all__ = ["Verdict", "created_at_from_claims", "decide"]
