"""What an SSH private key file holds, from its bytes alone: a key the
daemon can use unattended, one locked with a passphrase (which nobody is
there to type), or no private key at all.

OpenSSH's own format (``-----BEGIN OPENSSH PRIVATE KEY-----``, what
``ssh-keygen`` writes) is base64 of ``openssh-key-v1\\0`` then the cipher name
as a length-prefixed string: ``none`` when the key is not encrypted. PEM
keys (``ssh-keygen -m PEM``) say ``Proc-Type: 4,ENCRYPTED`` in their
headers, and an encrypted PKCS#8 key is ``BEGIN ENCRYPTED PRIVATE KEY``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import struct
from dataclasses import dataclass

OPENSSH_MAGIC = b"openssh-key-v1\0"
_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----(.*?)-----END \1PRIVATE KEY-----", re.DOTALL
)
_PUBLIC_KEY = re.compile(rb"\s*(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ [A-Za-z0-9+/=]+")


class KeyState(enum.Enum):
    UNENCRYPTED = "unencrypted"
    ENCRYPTED = "encrypted"
    NOT_A_KEY = "not a private key"


@dataclass(frozen=True)
class KeyCheck:
    state: KeyState
    detail: str  # the cipher of an encrypted key; what the file is instead of a key


def check_private_key(data: bytes) -> KeyCheck:
    """Whether ``data`` (a key file's content) is an unencrypted private key."""
    block = _BLOCK.search(data)
    if block is None:
        return KeyCheck(KeyState.NOT_A_KEY, _what_else(data))
    label, body = block.group(1).strip(), block.group(2)
    if label == b"OPENSSH":
        return _openssh(body)
    if label == b"ENCRYPTED":
        return KeyCheck(KeyState.ENCRYPTED, "encrypted PKCS#8")
    # base64 has no ':' nor ',': these can only be PEM headers
    if re.search(rb"Proc-Type:\s*4,\s*ENCRYPTED", body):
        cipher = re.search(rb"DEK-Info:\s*([A-Za-z0-9-]+)", body)
        return KeyCheck(
            KeyState.ENCRYPTED, cipher.group(1).decode("ascii") if cipher else "PEM encryption"
        )
    return KeyCheck(KeyState.UNENCRYPTED, f"PEM {(label or b'PKCS#8').decode('ascii')} key")


def _openssh(body: bytes) -> KeyCheck:
    try:
        raw = base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        return KeyCheck(KeyState.NOT_A_KEY, "a damaged OpenSSH key: its base64 does not decode")
    if not raw.startswith(OPENSSH_MAGIC):
        return KeyCheck(KeyState.NOT_A_KEY, "a damaged OpenSSH key: no openssh-key-v1 header")
    at = len(OPENSSH_MAGIC)
    if len(raw) < at + 4:
        return KeyCheck(KeyState.NOT_A_KEY, "a damaged OpenSSH key: it ends after its header")
    (length,) = struct.unpack_from(">I", raw, at)
    cipher = raw[at + 4 : at + 4 + length]
    if len(cipher) != length or not cipher.isascii():
        return KeyCheck(KeyState.NOT_A_KEY, "a damaged OpenSSH key: no cipher name")
    name = cipher.decode("ascii")
    if name == "none":
        return KeyCheck(KeyState.UNENCRYPTED, "OpenSSH key")
    return KeyCheck(KeyState.ENCRYPTED, name)


def _what_else(data: bytes) -> str:
    if not data.strip():
        return "the file is empty"
    if _PUBLIC_KEY.match(data):
        return "it is a public key"
    if data.startswith(b"PuTTY-User-Key-File-"):
        return "it is a PuTTY key"
    found = re.search(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----", data)
    if found:
        return f"its block is {found.group(1).decode('ascii')}"
    return "no '-----BEGIN ... PRIVATE KEY-----' block"
