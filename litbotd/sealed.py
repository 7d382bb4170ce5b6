"""Secrets at rest in Redis, sealed: AES-256-GCM under a key derived (HKDF-SHA256) from the App's
private key. Someone who can only read Redis (an unauthenticated port, a dump, a replica) gets no
usable installation token; every daemon holding the App key opens what another one sealed.

The key is derived from the private key's canonical DER (PKCS#8), so the same key in PKCS#1 or
PKCS#8 PEM, or with other line breaks, seals alike. `aad` binds a sealed value to its Redis key:
a value copied under another installation's key does not open.
"""
from __future__ import annotations

import base64
import functools
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO = b"litbotd sealed redis values v1"


@functools.lru_cache(maxsize=8)
def derive(private_key_pem: str, info: bytes = INFO) -> bytes:
    """A 32-byte key for one purpose (`info`) from the App's private key: every daemon holding
    the key derives the same one (the session cookies' key uses its own `info`)."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(der)


def _key(private_key_pem: str) -> bytes:
    return derive(private_key_pem, INFO)


def seal(private_key_pem: str, plaintext: str, aad: str) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(_key(private_key_pem)).encrypt(nonce, plaintext.encode(), aad.encode())
    return base64.b64encode(nonce + sealed).decode("ascii")


def unseal(private_key_pem: str, sealed: str, aad: str) -> str | None:
    """The plaintext, or None when it does not open (another App key, tampered, not sealed)."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        return AESGCM(_key(private_key_pem)).decrypt(raw[:12], raw[12:], aad.encode()).decode()
    except (InvalidTag, ValueError, TypeError):
        return None
