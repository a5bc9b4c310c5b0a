"""Async, typed client of recall's HTTP API."""

from .client import RecallClient, RecallError
from .models import (
    AppendResult,
    BatchCheck,
    ComponentHealth,
    ContextMemory,
    ConversationContext,
    EnhancedPrompt,
    Health,
    MemoryHit,
    SearchResult,
    Stats,
)

__all__ = [
    "AppendResult",
    "BatchCheck",
    "ComponentHealth",
    "ContextMemory",
    "ConversationContext",
    "EnhancedPrompt",
    "Health",
    "MemoryHit",
    "RecallClient",
    "RecallError",
    "SearchResult",
    "Stats",
]
