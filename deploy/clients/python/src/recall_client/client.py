"""The client: one `httpx.AsyncClient` per `RecallClient`; use it as an async context manager."""

from __future__ import annotations

from typing import Any, Dict, Optional
from urllib.parse import quote

import httpx

from .models import (
    AppendResult,
    BatchCheck,
    ConversationContext,
    EnhancedPrompt,
    Health,
    SearchResult,
    Stats,
)


class RecallError(Exception):
    """An error answer (or no answer) from the server, with the server's own message.

    `status` is the HTTP status (0 when the server could not be reached), `code` the server's
    stable code (`invalid_request`, `unauthorized`, `unavailable`, ...), `field` the request field
    at fault, `retry_after` the seconds to wait on a 503 or a 429 (rate limit).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
        retry_after: Optional[int] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later (unreachable, 429, 502-504)."""
        return self.status == 0 or self.status == 429 or self.status in (502, 503, 504)


def _segment(value: str) -> str:
    return quote(value, safe="")


class RecallClient:
    """Async client of one recall server.

    `api_key` is sent as `Authorization: Bearer <key>`. Pass `http` to reuse an
    `httpx.AsyncClient` of your own (it is then not closed by `aclose`).
    """

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        *,
        timeout: float = 30.0,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> "RecallClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool (when the client owns it)."""
        if self._own_http:
            await self._http.aclose()

    async def _call(
        self,
        method: str,
        *segments: str,
        params: Optional[Dict[str, Any]] = None,
        json: Optional[Dict[str, Any]] = None,
        ok_statuses: tuple = (),
    ) -> Any:
        url = self._base + "/" + "/".join(_segment(s) for s in segments)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = await self._http.request(
                method, url, params=query, json=json, headers=self._headers
            )
        except httpx.HTTPError as e:
            raise RecallError(0, "unreachable", f"{type(e).__name__}: {e}") from e
        if resp.is_success or resp.status_code in ok_statuses:
            return resp.json()
        retry_after = resp.headers.get("retry-after")
        try:
            err = resp.json()["error"]
            code, message, field = err["code"], err["message"], err.get("field")
        except (ValueError, KeyError, TypeError):
            code, message, field = "unexpected", resp.text[:200], None
        raise RecallError(
            resp.status_code,
            code,
            message,
            field,
            int(retry_after) if retry_after and retry_after.isdigit() else None,
        )

    async def append_message(
        self,
        user_id: str,
        character_name: str,
        text: str,
        role: str = "user",
        *,
        message_id: Optional[str] = None,
        created_at: Optional[str] = None,
        channel: Optional[str] = None,
    ) -> AppendResult:
        """Stores a chat message (`role`: user or assistant; `created_at`: RFC 3339)."""
        body: Dict[str, Any] = {"role": role, "text": text}
        for key, value in (
            ("message_id", message_id),
            ("created_at", created_at),
            ("channel", channel),
        ):
            if value is not None:
                body[key] = value
        d = await self._call("POST", "memory", "messages", user_id, character_name, json=body)
        return AppendResult.from_json(d)

    async def check_batch(self, user_id: str, character_name: str) -> BatchCheck:
        """The unsynced count; queues a batch when one is due."""
        return BatchCheck.from_json(
            await self._call("POST", "memory", "check-batch", user_id, character_name)
        )

    async def search(
        self,
        user_id: str,
        character_name: str,
        query: str,
        limit: int = 5,
        include_superseded: bool = False,
    ) -> SearchResult:
        """Semantic search of the pair's memories (`limit` 1-50), best first."""
        params = {
            "query": query,
            "limit": limit,
            "include_superseded": "true" if include_superseded else None,
        }
        d = await self._call("GET", "memory", "search", user_id, character_name, params=params)
        return SearchResult.from_json(d)

    async def get_conversation_context(
        self,
        user_id: str,
        character_name: str,
        message: Optional[str] = None,
        max_tokens: int = 800,
    ) -> ConversationContext:
        """A context block ranked against `message` (else the user's recent messages), within
        `max_tokens` (50-8000)."""
        params = {"message": message, "max_tokens": max_tokens}
        d = await self._call("GET", "memory", "context", user_id, character_name, params=params)
        return ConversationContext.from_json(d)

    async def enhance_system_prompt(
        self,
        user_id: str,
        character_name: str,
        base_system_prompt: str,
        message: Optional[str] = None,
        max_tokens: int = 800,
    ) -> EnhancedPrompt:
        """`base_system_prompt` with the pair's context appended, fenced as data."""
        body: Dict[str, Any] = {"base_system_prompt": base_system_prompt, "max_tokens": max_tokens}
        if message is not None:
            body["message"] = message
        d = await self._call(
            "POST", "memory", "enhance-prompt", user_id, character_name, json=body
        )
        return EnhancedPrompt.from_json(d)

    async def stats(self, user_id: str, character_name: str) -> Stats:
        """Message, memory, batch and token counts of the pair."""
        return Stats.from_json(await self._call("GET", "memory", "stats", user_id, character_name))

    async def health(self) -> Health:
        """Each component's state; a degraded server (503) is an answer, not an error."""
        return Health.from_json(await self._call("GET", "memory", "health", ok_statuses=(503,)))

    async def openapi(self) -> Dict[str, Any]:
        """The server's OpenAPI document."""
        return await self._call("GET", "openapi.json")
