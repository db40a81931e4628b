"""Text normalisation and hashing shared by every stage.

``text_key`` identifies a text up to case, Unicode form and whitespace: two texts with the
same key are the same text for positive exclusion. ``content_hash`` identifies the exact
bytes given to the model: it keys the embedding store.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable

import pyarrow as pa

KEY_BYTES = 16


def normalize_text(text: str) -> str:
    """NFKC, case-folded, NFKC again (case folding can undo the normal form, e.g. Greek
    letters with two accents), whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold()).split())


def text_key(text: str) -> bytes:
    return hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=KEY_BYTES).digest()


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=KEY_BYTES).digest()


def content_hashes(texts: Iterable[str]) -> pa.Array:
    return pa.array([content_hash(t) for t in texts], pa.binary(KEY_BYTES))
