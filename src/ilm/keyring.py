"""Master keys for envelope encryption: a key-ring file plus environment variables.

The key ring is a TOML file (``key_file`` of an encrypted tier, default
``keyring.toml`` in ILM_HOME) that only its owner may read (mode 0600: a file
that group or others can read is refused)::

    active = "k2"                      # new objects are wrapped by this key

    [keys.k1]
    material = "base64 of 32 random bytes"
    created = "2026-11-28T17:00:00+00:00"
    retired = false                    # true: no longer used, not even to read

    [keys.k2]
    material = "..."
    created = "..."

``ILM_MASTER_KEY_<ID>`` (base64 of 32 bytes) adds a key from the environment
(for readers that should not hold the file, or keys kept in a secret store);
``ILM_ACTIVE_KEY`` names the active key instead of the file's ``active``.

A running server sees changes to the file (``ilm keys new``, ``ilm keys
retire``) on its next encryption or decryption: the ring re-reads the file
when its modification time or inode changes.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from ilm.errors import ConfigError, KeyUnavailable
from ilm.storage.envelope import KEY_ID, new_master_key

__all__ = ["MasterKey", "KeyRing", "ENV_PREFIX", "ENV_ACTIVE"]

ENV_PREFIX = "ILM_MASTER_KEY_"
ENV_ACTIVE = "ILM_ACTIVE_KEY"


@dataclass(frozen=True)
class MasterKey:
    id: str
    material: bytes = field(repr=False)  # never in a log line or a traceback
    created: str = ""
    retired: bool = False
    source: str = "file"  # file | env


def _material(text: object, where: str) -> bytes:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not base64") from None
    if len(raw) != 32:
        raise ConfigError(f"{where}: a master key is 32 bytes (256 bits), this one is {len(raw)}")
    return raw


class KeyRing:
    """The master keys of one key-ring file (and the environment). Thread-safe."""

    def __init__(self, path: Path, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self._env = dict(os.environ if env is None else env)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, MasterKey] = {}
        self._active: str | None = None
        self._load()

    # -- reading -----------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the key ring: {exc.strerror}") from None
        return st.st_mtime_ns, st.st_ino

    def _load(self) -> None:
        stamp = self._file_stamp()
        keys: dict[str, MasterKey] = {}
        active: str | None = None
        if stamp is not None:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(f"{self.path}: mode {mode:04o} lets other users read the master keys; "
                                  f"run 'chmod 600 {self.path}'")
            try:
                raw = tomllib.loads(self.path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{self.path}: not valid TOML: {exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{self.path}: cannot read the key ring: {exc}") from None
            unknown = set(raw) - {"active", "keys"}
            if unknown:
                raise ConfigError(f"{self.path}: key {sorted(unknown)[0]!r}: not a key-ring setting (active, keys)")
            entries = raw.get("keys", {})
            if not isinstance(entries, dict):
                raise ConfigError(f"{self.path}: key 'keys': a table of keys, [keys.ID]")
            for kid, entry in entries.items():
                where = f"{self.path}: key 'keys.{kid}"
                if not KEY_ID.fullmatch(kid):
                    raise ConfigError(f"{where}': a key id is 1-32 letters, digits, '-' or '_'")
                if not isinstance(entry, dict) or "material" not in entry:
                    raise ConfigError(f"{where}': needs material = \"base64 of 32 bytes\"")
                extra = set(entry) - {"material", "created", "retired"}
                if extra:
                    raise ConfigError(f"{where}.{sorted(extra)[0]}': not a key setting (material, created, retired)")
                keys[kid] = MasterKey(kid, _material(entry["material"], f"{where}.material'"),
                                      str(entry.get("created", "")), bool(entry.get("retired", False)))
            if "active" in raw:
                active = str(raw["active"])
        for var, value in self._env.items():
            if var.startswith(ENV_PREFIX) and var != ENV_PREFIX:
                kid = var[len(ENV_PREFIX):]
                if not KEY_ID.fullmatch(kid):
                    raise ConfigError(f"environment variable {var}: a key id is 1-32 letters, digits, '-' or '_'")
                keys[kid] = MasterKey(kid, _material(value, f"environment variable {var}"), source="env")
        active = self._env.get(ENV_ACTIVE) or active
        if active is not None and (active not in keys or keys[active].retired):
            raise ConfigError(f"{self.path}: active key {active!r} is "
                              f"{'retired' if active in keys else 'not in the key ring nor the environment'}")
        self._keys, self._active, self._stamp = keys, active, stamp

    def _fresh(self) -> None:
        with self._lock:
            if self._file_stamp() != self._stamp:
                self._load()

    def keys(self) -> list[MasterKey]:
        self._fresh()
        return list(self._keys.values())

    @property
    def active_id(self) -> str | None:
        self._fresh()
        return self._active

    def active(self) -> MasterKey:
        """The key that wraps new data keys; ConfigError when there is none."""
        self._fresh()
        if self._active is None:
            raise ConfigError(f"{self.path}: no active master key: run 'ilm keys new' (or set {ENV_ACTIVE} "
                              f"with an {ENV_PREFIX}<ID> variable)")
        return self._keys[self._active]

    def material(self, key_id: str) -> bytes:
        """The key to unwrap with; KeyUnavailable when missing or retired."""
        self._fresh()
        k = self._keys.get(key_id)
        if k is None:
            raise KeyUnavailable(f"master key {key_id!r} is not in the key ring {self.path} nor in "
                                 f"{ENV_PREFIX}{key_id}: objects wrapped by it cannot be read")
        if k.retired:
            raise KeyUnavailable(f"master key {key_id!r} is retired in {self.path}: objects wrapped by it "
                                 "cannot be read (un-retire it, then run 'ilm keys rotate')")
        return k.material

    # -- writing (ilm keys new / retire) -------------------------------------------

    def add(self, key_id: str | None = None, *, activate: bool = True) -> MasterKey:
        """A new random master key, written to the file (created 0600) and made active."""
        with self._lock:
            self._load()
            if key_id is None:
                key_id = f"k{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
            if not KEY_ID.fullmatch(key_id):
                raise ConfigError(f"key id {key_id!r}: 1-32 letters, digits, '-' or '_'")
            if key_id in self._keys:
                raise ConfigError(f"{self.path}: a key {key_id!r} exists already")
            key = MasterKey(key_id, new_master_key(), datetime.now(timezone.utc).isoformat(timespec="seconds"))
            keys = {**self._file_keys(), key_id: key}
            self._write(keys, key_id if activate else self._active)
            self._load()
            return key

    def retire(self, key_id: str) -> None:
        """Mark a file key retired (callers first check that nothing uses it)."""
        with self._lock:
            self._load()
            keys = self._file_keys()
            if key_id not in keys:
                where = "comes from the environment" if key_id in self._keys else "is not in the key ring"
                raise ConfigError(f"{self.path}: key {key_id!r} {where}: only a file key can be retired here")
            if key_id == self._active:
                raise ConfigError(f"{self.path}: key {key_id!r} is the active key: make another active first "
                                  "('ilm keys new', then 'ilm keys rotate')")
            keys[key_id] = replace(keys[key_id], retired=True)
            self._write(keys, self._active)
            self._load()

    def _file_keys(self) -> dict[str, MasterKey]:
        return {k.id: k for k in self._keys.values() if k.source == "file"}

    def _write(self, keys: dict[str, MasterKey], active: str | None) -> None:
        """Write the whole ring to a 0600 temporary file, then rename it over the old one."""
        lines = ["# ilm master keys: keep this file secret and backed up; losing a key loses",
                 "# every object wrapped by it (docs/security.md). Mode 0600.", ""]
        if active is not None:
            lines += [f'active = "{active}"', ""]
        for k in keys.values():
            lines += [f"[keys.{k.id}]", f'material = "{base64.b64encode(k.material).decode()}"',
                      f'created = "{k.created}"', f"retired = {'true' if k.retired else 'false'}", ""]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, "\n".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        # The rename must be durable before any object is wrapped by a new key:
        # a crash must not bring back a ring without it.
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
