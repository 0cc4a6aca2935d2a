"""Storage tiers behind one interface (``Tier``): filesystem and S3."""

from __future__ import annotations

from ilm.config import FilesystemTierSettings, S3TierSettings, Settings
from ilm.errors import ConfigError
from ilm.storage.base import ObjectExists, Tier, check_key, sha256_hex
from ilm.storage.filesystem import FilesystemTier

__all__ = ["Tier", "ObjectExists", "FilesystemTier", "open_tier", "open_tiers", "check_key", "sha256_hex"]


def open_tier(name: str, settings: Settings) -> Tier:
    """The backend for the tier ``name`` of ``settings`` (encrypting when configured)."""
    t = settings.tiers.get(name)
    if t is None:
        raise ConfigError(f"no tier named {name!r} (tiers: {', '.join(settings.tiers)})")
    if t.encryption == "envelope":
        from ilm.keyring import KeyRing
        from ilm.storage.encrypted import EncryptedTier

        ring = KeyRing(settings.resolve(t.key_file))
        ring.active()  # no key to encrypt with: a configuration error now, not a failed ingest later
        return EncryptedTier(_plain_tier(name, settings), ring)  # type: ignore[arg-type]
    return _plain_tier(name, settings)


def _plain_tier(name: str, settings: Settings) -> Tier:
    t = settings.tiers[name]
    if isinstance(t, FilesystemTierSettings):
        fs = FilesystemTier(name, settings.resolve(t.path), fsync=t.fsync, worm=t.worm, retain_days=t.retain_days)
        fs.pack_studies = t.pack_studies
        return fs
    if isinstance(t, S3TierSettings):
        from ilm.storage.s3 import S3Tier  # only this module imports boto3

        s3 = S3Tier.from_settings(name, t)
        s3.pack_studies = t.pack_studies
        return s3
    raise ConfigError(f"tier {name!r}: unknown kind")


def open_tiers(settings: Settings) -> dict[str, Tier]:
    return {name: open_tier(name, settings) for name in settings.tiers}
