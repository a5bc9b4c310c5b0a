"""The API's answers as dataclasses (field names as on the wire; see the server's /openapi.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class AppendResult:
    """A stored message: `created` is False when a message with this id already existed."""

    message_id: str
    created: bool

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "AppendResult":
        return cls(message_id=d["message_id"], created=d["created"])


@dataclass(frozen=True)
class BatchCheck:
    """The pair's unsynced count and whether a batch was queued (`reason`: threshold, idle, not_due)."""

    user_id: str
    character_name: str
    unsynced: int
    threshold: int
    triggered: bool
    reason: str

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "BatchCheck":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class MemoryHit:
    """A memory found by a search, with its cosine `score` (higher is closer)."""

    id: str
    text: str
    score: float
    category: str
    importance: int
    created_at: str
    source_message_ids: List[str]
    batch_id: str
    event_time: Optional[str] = None
    superseded_by: Optional[str] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "MemoryHit":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SearchResult:
    """Memories, best first."""

    query: str
    count: int
    results: List[MemoryHit]

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "SearchResult":
        return cls(
            query=d["query"],
            count=d["count"],
            results=[MemoryHit.from_json(r) for r in d["results"]],
        )


@dataclass(frozen=True)
class ContextMemory:
    """A memory inside a context block."""

    id: str
    user_id: str
    character_name: str
    text: str
    category: str
    importance: int
    created_at: str
    source_message_ids: List[str]
    batch_id: str
    event_time: Optional[str] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ContextMemory":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ConversationContext:
    """A context block for the bot's prompt: ranked memories, then recent messages."""

    context: str
    estimated_tokens: int
    max_tokens: int
    memories: List[ContextMemory]
    recent_messages: int

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ConversationContext":
        return cls(
            context=d["context"],
            estimated_tokens=d["estimated_tokens"],
            max_tokens=d["max_tokens"],
            memories=[ContextMemory.from_json(m) for m in d["memories"]],
            recent_messages=d["recent_messages"],
        )


@dataclass(frozen=True)
class EnhancedPrompt:
    """The bot's system prompt with the context appended, fenced as data."""

    system_prompt: str
    memories_used: int
    recent_messages: int
    estimated_context_tokens: int

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "EnhancedPrompt":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Stats:
    """Counts of a pair. `messages`: total/synced/unsynced; `memories`: current/superseded/total;
    `batches`: done/failed; `tokens`: prompt/completion."""

    user_id: str
    character_name: str
    messages: Dict[str, int]
    memories: Dict[str, int]
    batches: Dict[str, int]
    tokens: Dict[str, int]
    threshold: int
    extractor: str
    last_batch_at: Optional[str] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Stats":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ComponentHealth:
    """One component: `status` is ok or down (`kind` says why)."""

    status: str
    kind: Optional[str] = None
    mode: Optional[str] = None
    model: Optional[str] = None
    dimension: Optional[int] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ComponentHealth":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Health:
    """`status` is ok or degraded; one entry per component."""

    status: str
    components: Dict[str, ComponentHealth] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Health":
        return cls(
            status=d["status"],
            components={k: ComponentHealth.from_json(v) for k, v in d["components"].items()},
        )
