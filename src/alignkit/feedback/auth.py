"""Secrets for annotator accounts: password hashing, API tokens, session and CSRF tokens.

Standard library only. Passwords are hashed with scrypt (memory-hard, salted); API
tokens and session ids are 256-bit random strings, so a single SHA-256 is enough to
store them (there is nothing to brute-force); only hashes are ever written to the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["hash_password", "hash_token", "new_password", "new_token", "verify_password"]

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def new_password() -> str:
    """A random one-time password (~96 bits), shown once by ``alignkit annotate add-user``."""
    return secrets.token_urlsafe(12)


def new_token(prefix: str = "akt_") -> str:
    """A random 256-bit bearer token (API tokens, session ids, CSRF tokens)."""
    return prefix + secrets.token_urlsafe(32)


def _bytes(secret: str) -> bytes:
    # surrogatepass: whatever text arrives (even invalid Unicode) hashes, never raises
    return secret.encode("utf-8", "surrogatepass")


def hash_token(token: str) -> str:
    """SHA-256 hex of a high-entropy token; what the store keeps instead of the token."""
    return hashlib.sha256(_bytes(token)).hexdigest()


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        _bytes(password), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            _bytes(password), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)
