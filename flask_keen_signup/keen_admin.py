"""Keen's delete-events API, with the master key: the Keen half of erasing a user.

Kept apart from :mod:`.keen` (the write client on the sender's path) because it needs a
different, far more powerful key (``KEEN_MASTER_KEY``), is used only by
``flask keen-signup forget``, and must never be reachable from the request path.

``DELETE /3.0/projects/{project}/events/{collection}?filters=[...]`` with the master key in
``Authorization`` deletes every event matching the filters and answers ``204``
(Keen's API reference, "Delete Events"). The same care as the write client, through the
same code (the write client's ``_request``): the key travels in the header only, and no exception
raised here chains a ``requests`` exception (whose ``.request`` holds the headers) or
quotes the key.
"""

from __future__ import annotations

import json

from ._text import keen_text
from .config import DEFAULT_API_URL
from .config import DEFAULT_TIMEOUT
from .keen import _KeenProject


class KeenAdminClient(_KeenProject):
    """Delete events from one Keen project with its master key.

    :param project_id: the Keen project id.
    :param master_key: the project's Master Key (an Access Key cannot delete).
    :param api_url: base URL, ``https://api.keen.io`` or an emulator's ``.url``.
    :param timeout: ``(connect, read)`` seconds.
    """

    def __init__(
        self,
        project_id: str,
        master_key: str,
        *,
        api_url: str = DEFAULT_API_URL,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(project_id, master_key, "master_key", api_url, timeout)

    def delete_user_events(self, collection: str, user_id: str, *, property_name: str) -> None:
        """Delete every event of ``collection`` whose ``property_name`` equals ``user_id``.

        ``user_id`` is looked for as the event builder sent it (:func:`._text.keen_text`:
        a ``sub`` with control or bidi characters reached Keen with them replaced).
        """
        value = keen_text(user_id)
        self.delete_events(
            collection,
            [{"property_name": property_name, "operator": "eq", "property_value": value}],
        )

    def delete_events(self, collection: str, filters: list[dict[str, object]]) -> None:
        """``DELETE .../events/{collection}?filters=...`` (all time). Keen answers 204.

        :raises KeenConnectionError: no answer (retryable).
        :raises KeenAPIError: a non-2xx; ``AdminOnlyEndpointError`` (401) means the key
            given is not the master key.
        """
        if not filters:
            raise ValueError("refusing to delete a whole collection: give filters")
        params = {"filters": json.dumps(filters, separators=(",", ":"))}
        self._request("DELETE", self.event_url(collection), params=params)
