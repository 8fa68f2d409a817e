"""The little of JWS the fake authority needs: RS256/PS256 compact tokens.

Written against `cryptography` directly rather than PyJWT: the simulator must check
exactly what Entra ID checks (header thumbprints, algorithms) and stay independent of the
library MSAL uses to build the very assertions it verifies.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ALGORITHMS = ("RS256", "PS256")


class JWTError(ValueError):
    """The token is not a well-formed compact JWS."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JWTError("bad base64url") from exc


def _padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RS256":
        return padding.PKCS1v15()
    if alg == "PS256":
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    raise JWTError(f"unsupported alg {alg!r}")


def encode(
    header: dict[str, Any], payload: dict[str, Any], key: rsa.RSAPrivateKey, alg: str = "RS256"
) -> str:
    header = {"typ": "JWT", **header, "alg": alg}
    signing_input = (
        b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url_encode(json.dumps(payload, separators=(",", ":")).encode())
    )
    sign_padding = (
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        if alg == "PS256"
        else padding.PKCS1v15()
    )
    signature = key.sign(signing_input.encode("ascii"), sign_padding, hashes.SHA256())
    return signing_input + "." + b64url_encode(signature)


class Unverified:
    """A parsed compact JWS whose signature has not been checked yet."""

    def __init__(self, token: str) -> None:
        parts = token.split(".")
        if len(parts) != 3:
            raise JWTError("a JWS has three parts")
        try:
            header = json.loads(b64url_decode(parts[0]))
            payload = json.loads(b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise JWTError("header or payload is not JSON") from exc
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise JWTError("header and payload must be JSON objects")
        self.header: dict[str, Any] = header
        self.payload: dict[str, Any] = payload
        self.signing_input = (parts[0] + "." + parts[1]).encode("ascii")
        self.signature = b64url_decode(parts[2])

    @property
    def alg(self) -> str:
        return str(self.header.get("alg"))

    def verify(self, public_key: rsa.RSAPublicKey) -> bool:
        if self.alg not in ALGORITHMS:
            return False
        try:
            public_key.verify(
                self.signature, self.signing_input, _padding(self.alg), hashes.SHA256()
            )
        except InvalidSignature:
            return False
        return True


def jwk(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    """The public key as a JWK, for the ``jwks_uri`` documents."""
    numbers = public_key.public_numbers()

    def _b64_int(value: int) -> str:
        return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {
        "kty": "RSA",
        "use": "sig",
        "kid": kid,
        "n": _b64_int(numbers.n),
        "e": _b64_int(numbers.e),
    }
