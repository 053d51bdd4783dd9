"""Job tokens: a fresh secret per attempt that its ranks present to the WorkerService.

The store keeps only the token's sha256 (`hash_token`); the plain token lives in the ranks' environment
and, while the attempt runs, in the supervisor's memory. The attempt's process tag is derived from the
hash, so a restarted coordinator finds the processes of an attempt it re-adopts.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return secrets.token_hex(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str, token_hash: str) -> bool:
    return bool(token) and bool(token_hash) and hmac.compare_digest(hash_token(token), token_hash)


def attempt_tag(token_hash: str) -> str:
    """The value of GRADMESH_ATTEMPT_TAG that every process of the attempt carries."""
    return token_hash[:32]
