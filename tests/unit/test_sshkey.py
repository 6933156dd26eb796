"""Telling an unencrypted SSH private key from one locked by a passphrase
(which the daemon cannot type) or from a file that is no private key,
with real keys made by ssh-keygen."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bmsync.core.sshkey import KeyState, check_private_key


def keygen(path: Path, *options: str) -> bytes:
    subprocess.run(["ssh-keygen", "-q", *options, "-f", str(path)], check=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.mark.parametrize(
    ("options", "detail"),
    [
        (("-t", "ed25519", "-N", ""), "OpenSSH key"),
        (("-t", "ecdsa", "-N", ""), "OpenSSH key"),
        (("-t", "ecdsa", "-m", "PEM", "-N", ""), "PEM EC key"),
        (("-t", "rsa", "-b", "2048", "-m", "PKCS8", "-N", ""), "PEM PKCS#8 key"),
    ],
)
def test_unencrypted_keys(keys: Path, options: tuple[str, ...], detail: str) -> None:
    check = check_private_key(keygen(keys / "-".join(options).replace(" ", ""), *options))
    assert check.state is KeyState.UNENCRYPTED
    assert check.detail == detail


@pytest.mark.parametrize(
    ("options", "detail"),
    [
        (("-t", "ed25519", "-N", "secret"), "aes256-ctr"),
        (("-t", "ed25519", "-N", "secret", "-Z", "chacha20-poly1305@openssh.com"), "chacha20"),
        (("-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "secret"), "AES-128-CBC"),
        (("-t", "rsa", "-b", "2048", "-m", "PKCS8", "-N", "secret"), "encrypted PKCS#8"),
    ],
)
def test_keys_locked_by_a_passphrase(keys: Path, options: tuple[str, ...], detail: str) -> None:
    check = check_private_key(keygen(keys / "-".join(options).replace(" ", ""), *options))
    assert check.state is KeyState.ENCRYPTED
    assert detail in check.detail


def test_a_passphrase_added_later(keys: Path) -> None:
    key = keys / "later"
    assert check_private_key(keygen(key, "-t", "ed25519", "-N", "")).state is KeyState.UNENCRYPTED
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "x", "-f", str(key)], check=True)
    assert check_private_key(key.read_bytes()).state is KeyState.ENCRYPTED
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "x", "-N", "", "-f", str(key)], check=True)
    assert check_private_key(key.read_bytes()).state is KeyState.UNENCRYPTED


def test_files_that_are_no_private_key(keys: Path) -> None:
    key = keys / "pub"
    keygen(key, "-t", "ed25519", "-N", "")
    real = key.read_bytes()
    cases = {
        key.with_suffix(".pub").read_bytes(): "public key",
        b"": "empty",
        b"\n  \n": "empty",
        b"hello\n": "no '-----BEGIN ... PRIVATE KEY-----' block",
        b"\x00\xff\x10binary": "no '-----BEGIN",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n": "CERTIFICATE",
        b"PuTTY-User-Key-File-3: ssh-ed25519\n": "PuTTY",
        real.replace(b"b3BlbnNzaC1rZXktdjE", b"AAAAAAAAAAAAAAAAAAA"): "no openssh-key-v1",
        real[:60] + b"!!" + real[60:]: "base64",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n"
        b"-----END OPENSSH PRIVATE KEY-----\n": "ends after its header",
    }
    for data, words in cases.items():
        check = check_private_key(data)
        assert check.state is KeyState.NOT_A_KEY, data
        assert words in check.detail, (data, check.detail)
