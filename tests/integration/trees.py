"""Trees to sync: odd names and metadata, and random changes."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

ODD_NAMES = [
    b"with space.conf",
    b"new\nline.conf",
    b"latin1-\xe9t\xe9.conf",  # not UTF-8
    b"\xff\xfe-raw-bytes",
    b"x" * 251 + b".cfg",  # 255 bytes, NAME_MAX
    b"-starts-with-dash",
    b"back\\slash*star?.conf",
]


def populate_odd(etc: Path) -> None:
    """Files an /etc copy lacks but a real one may have."""
    base = os.fsencode(etc)
    odd = os.path.join(base, b"odd")
    os.mkdir(odd)
    for i, name in enumerate(ODD_NAMES):
        with open(os.path.join(odd, name), "wb") as f:
            f.write(b"content %d\n" % i)
    # several protocol chunks: streamed, reassembled, verified
    Path(os.fsdecode(os.path.join(odd, b"big.db"))).write_bytes(
        random.Random(7).randbytes(5 * 1024 * 1024 + 3)
    )
    os.mkdir(os.path.join(base, b"empty.d"))
    os.symlink(b"/nowhere/at/all", os.path.join(odd, b"dangling"))
    os.symlink(b"../hostname", os.path.join(odd, b"relative-link"))
    owned = os.path.join(odd, b"owned.conf")
    Path(os.fsdecode(owned)).write_text("secret\n")
    os.chown(owned, 1234, 5678)
    os.chmod(owned, 0o640)
    setgid = os.path.join(base, b"setgid.d")
    os.mkdir(setgid)
    os.chown(setgid, 0, 5678)
    os.chmod(setgid, 0o2775)
    os.lchown(os.path.join(odd, b"dangling"), 4321, 4321)
    xattr = os.path.join(odd, b"xattr.conf")
    Path(os.fsdecode(xattr)).write_text("labelled\n")
    os.setxattr(xattr, "user.bmsync.test", b"value \x00 with nul")
    acl = os.path.join(odd, b"acl.conf")
    Path(os.fsdecode(acl)).write_text("acl\n")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:5678:r", os.fsdecode(acl)], check=True)
    os.utime(os.path.join(odd, b"with space.conf"), ns=(1, 1_234_567_891_234_567_891))
    os.utime(os.path.join(odd, b"dangling"), ns=(1, 987_654_321_123_456_789), follow_symlinks=False)


def random_changes(root: Path, rng: random.Random, count: int) -> list[str]:
    """Apply ``count`` random changes below ``root``; returns what was done."""
    done: list[str] = []

    def files() -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())

    def dirs() -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())

    def everything() -> list[Path]:
        return sorted(root.rglob("*"))

    while len(done) < count:
        action = rng.choice(
            [
                "create",
                "modify",
                "chmod",
                "chown",
                "rename",
                "delete",
                "symlink",
                "mkdir",
                "rmdir",
                "file_to_dir",
                "dir_to_file",
                "move_dir",
                "append",
                "sed_i",
                "vim",
            ]
        )
        where = rng.choice(dirs() or [root])
        name = f"n{rng.randrange(10**6)}"
        try:
            if action == "create":
                (where / name).write_bytes(rng.randbytes(rng.randrange(0, 5000)))
            elif action == "modify" and files():
                f = rng.choice(files())
                f.write_bytes(f.read_bytes()[:100] + rng.randbytes(rng.randrange(0, 3000)))
            elif action == "append" and files():
                with rng.choice(files()).open("ab") as f:
                    f.write(rng.randbytes(rng.randrange(1, 200)))
            elif action == "sed_i" and files():
                # sed -i: a temp file in the same directory renamed over the original
                f = rng.choice(files())
                tmp = f.with_name(f"sed{rng.randrange(10**6)}")
                tmp.write_bytes(f.read_bytes().replace(b"a", b"b") + b"# sed\n")
                tmp.rename(f)
            elif action == "vim" and files():
                # vim: the original renamed to a backup, the new text written, backup removed
                f = rng.choice(files())
                backup = f.with_name(f.name + "~")
                old = f.read_bytes()
                f.rename(backup)
                f.write_bytes(old + b"\n# edited in vim\n")
                backup.unlink()
            elif action == "chmod" and files():
                rng.choice(files()).chmod(rng.choice([0o600, 0o640, 0o644, 0o755, 0o4755]))
            elif action == "chown" and everything():
                os.lchown(rng.choice(everything()), rng.randrange(2000), rng.randrange(2000))
            elif action == "rename" and files():
                rng.choice(files()).rename(where / name)
            elif action == "delete" and files():
                rng.choice(files()).unlink()
            elif action == "symlink":
                (where / name).symlink_to(
                    rng.choice(["../x", "/etc/passwd", "nowhere", name + "2"])
                )
            elif action == "mkdir":
                (where / name).mkdir()
            elif action == "rmdir":
                empty = [d for d in dirs() if d != root and not any(d.iterdir())]
                if not empty:
                    continue
                rng.choice(empty).rmdir()
            elif action == "file_to_dir" and files():
                f = rng.choice(files())
                f.unlink()
                f.mkdir()
                (f / "inner.conf").write_text("was a file\n")
            elif action == "dir_to_file":
                # a small directory (two entries at most, all depths): editing,
                # not a delete storm
                small = [d for d in dirs() if d != root and len(list(d.rglob("*"))) <= 2]
                if not small:
                    continue
                victim = rng.choice(small)
                shutil.rmtree(victim)
                victim.write_text("was a directory\n")
            elif action == "move_dir" and dirs():
                victim = rng.choice(dirs())
                if victim != root and not where.is_relative_to(victim):
                    victim.rename(where / name)
            else:
                continue
        except OSError:
            continue
        done.append(action)
    return done
