"""Typed settings: one TOML file in ILM_HOME plus environment variables.

Loaded once by a front-end and passed explicitly; nothing reads it globally.

Precedence: environment variables override the file. ``ILM_HOME`` (default
``./ilm-demo``) holds ``ilm.toml``; ``ILM_CONFIG`` points at another file.
``ILM_CATALOG_URL``, ``ILM_DICOM_AE_TITLE``, ``ILM_DICOM_HOST``,
``ILM_DICOM_PORT``, ``ILM_HTTP_HOST`` and ``ILM_HTTP_PORT`` override single keys.
Tiers are listed hottest first: their order in the file is their order.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ilm.errors import ConfigError

__all__ = [
    "Settings",
    "TierSettings",
    "FilesystemTierSettings",
    "S3TierSettings",
    "load_settings",
    "default_home",
    "write_default_config",
    "CONFIG_NAME",
    "LifecycleSettings",
    "DestinationSettings",
    "PrefetchSettings",
    "AuditSettings",
    "FixitySettings",
    "is_loopback",
]

CONFIG_NAME = "ilm.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrefetchSettings(_Strict):
    """Which priors to promote when a new study of the patient arrives."""

    count: int = Field(3, ge=1, le=100)          # at most this many priors per new study
    max_age_years: int = Field(10, ge=1)         # ignore priors older than this
    match: Literal["modality", "body_part", "either"] = "either"


class AuditSettings(_Strict):
    """DICOM audit messages (IHE ATNA) to a file and/or a syslog receiver (docs/security.md)."""

    file: str = ""                  # one RFC 5424 message per line; relative to ILM_HOME
    syslog_host: str = ""           # an audit record repository (RFC 5424 over TCP, RFC 6587 framing)
    syslog_port: int = Field(6514, ge=1, le=65535)
    syslog_tls: bool = False        # RFC 5425; the receiver's certificate is checked
    syslog_ca: str = ""             # CA file for that check (empty: the system's CAs)
    syslog_cert: str = ""           # our client certificate and key (PEM), for mutual TLS
    syslog_key: str = ""
    app_name: str = Field("ilm", min_length=1, max_length=48)
    source_id: str = ""             # AuditSourceID (empty: the AE title)
    enterprise_site_id: str = ""    # AuditEnterpriseSiteID
    spool: str = "audit-spool.log"  # messages the receiver has not taken yet; resent in order
    queue_size: int = Field(10000, ge=1)
    retry_seconds: float = Field(10.0, gt=0)

    @property
    def enabled(self) -> bool:
        return bool(self.file or self.syslog_host)

    @field_validator("app_name")
    @classmethod
    def _app(cls, v: str) -> str:
        if any(not 33 <= ord(c) <= 126 for c in v):
            raise ValueError(f"{v!r}: printable ASCII without spaces (an RFC 5424 APP-NAME)")
        return v

    @model_validator(mode="after")
    def _tls_files(self) -> "AuditSettings":
        if bool(self.syslog_cert) != bool(self.syslog_key):
            raise ValueError("syslog_cert and syslog_key go together: give both or neither")
        if (self.syslog_ca or self.syslog_cert) and not self.syslog_tls:
            raise ValueError("syslog_ca, syslog_cert and syslog_key need syslog_tls = true")
        return self


class _TierCommon(_Strict):
    cost_per_gb_month: float = Field(0.0, ge=0)
    retrieval_cost_per_gb: float = Field(0.0, ge=0)
    # Request prices per 1,000 (S3: PUT/COPY/POST/LIST and GET); docs/cost.md.
    put_cost_per_1000: float = Field(0.0, ge=0)
    get_cost_per_1000: float = Field(0.0, ge=0)
    retrieval_latency_seconds: float = Field(0.0, ge=0)
    min_storage_days: int = Field(0, ge=0)
    # Archive class (tape, Glacier): a read needs a restore that completes after
    # retrieval_latency_seconds; the restored copy is kept restored_copy_days.
    archive: bool = False
    restored_copy_days: int = Field(7, ge=0)
    # Immutability (WORM, docs/security.md): each copy written here is locked for
    # retain_days from when it is written (S3 Object Lock; read-only files on a file
    # system); ilm deletes no locked copy before its date.
    worm: Literal["off", "governance", "compliance"] = "off"
    retain_days: int = Field(0, ge=0, le=36500)
    # Access-based tiering: studies not read for cooling_days move to the next tier.
    cooling_days: int | None = Field(None, ge=1)
    # What a read of a study on this tier does: nothing, promote it to the
    # first tier, or (on arrival of a new study) promote the patient's priors.
    retrieval_policy: Literal["never", "on_read", "prefetch_priors"] = "never"
    prefetch: PrefetchSettings = PrefetchSettings()
    # Capacity watermarks: "85%" of the file system or a size such as "500GB".
    high_watermark: str | None = None
    low_watermark: str | None = None
    expected_daily_gb: float = Field(0.0, ge=0)  # arrivals to keep room for (dcm4chee style)
    # Store a whole study as one object with an index (cold object/archive tiers).
    pack_studies: bool = False
    # Encryption at rest (docs/security.md): "envelope" = AES-256-GCM with a data
    # key per object, wrapped by a master key of the key ring in key_file.
    encryption: Literal["none", "envelope"] = "none"
    key_file: str = "keyring.toml"
    # Keep a second copy of every instance stored here on these tiers (replica
    # tiers: repair sources for fixity checks; never lifecycle targets). See docs/security.md.
    replicas: list[str] = []

    @model_validator(mode="after")
    def _worm(self) -> "_TierCommon":
        if self.worm == "off" and self.retain_days:
            raise ValueError("retain_days needs worm = \"governance\" or \"compliance\"")
        if self.worm != "off" and self.pack_studies:
            raise ValueError("worm and pack_studies together are not supported (a packed study is rewritten by moves)")
        return self

    @field_validator("high_watermark", "low_watermark")
    @classmethod
    def _watermark(cls, v: str | None) -> str | None:
        if v is None:
            return v
        text = v.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                raise ValueError(f"{v!r} is not a percentage such as '85%'") from None
            if not 0 < pct <= 100:
                raise ValueError(f"{v!r}: a percentage must be above 0 and at most 100")
            return text
        from ilm.policy.sizes import parse_size

        try:
            parse_size(text)
        except ValueError as exc:
            raise ValueError(f"{v!r} is neither a percentage ('85%') nor a size ('500GB'): {exc}") from None
        return text


class FilesystemTierSettings(_TierCommon):
    kind: Literal["filesystem"]
    path: str
    fsync: bool = True


class S3TierSettings(_TierCommon):
    kind: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    create_bucket: bool = False
    connect_timeout_seconds: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    # Concurrent uploads when a move copies into this tier (instead of
    # lifecycle.move_workers): an upload mostly waits on the store, not the CPU.
    upload_workers: int = Field(8, ge=1, le=64)
    # Server-side encryption by the store (docs/security.md): "AES256" (SSE-S3) or "aws:kms".
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None

    @model_validator(mode="after")
    def _kms_key(self) -> "S3TierSettings":
        if self.sse_kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError('sse_kms_key_id needs sse = "aws:kms"')
        return self


TierSettings = Annotated[
    Union[FilesystemTierSettings, S3TierSettings], Field(discriminator="kind")
]


class CatalogSettings(_Strict):
    url: str = ""
    # SQLite only: "full" flushes the write-ahead log at every commit, so an instance ilm has
    # answered for keeps its catalog row through a power failure; "normal" flushes it only at
    # checkpoints (faster; the last commits may be lost, leaving files without rows).
    sqlite_synchronous: Literal["full", "normal"] = "full"


class IngestSettings(_Strict):
    tier: str = ""
    conflicts_dir: str = "conflicts"


class DestinationSettings(_Strict):
    """A C-MOVE destination: the AE title a move request names, and where it listens."""

    host: str
    port: int = Field(ge=1, le=65535)
    # DICOM over TLS to this AE (C-MOVE sub-associations, Storage Commitment reports; docs/security.md):
    # its certificate is checked against tls_ca (default: the system's CAs) and must name tls_server_name
    # (default: host); tls_cert/tls_key: ilm's client certificate, for an AE that asks for one.
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""

    @model_validator(mode="after")
    def _tls(self) -> "DestinationSettings":
        _tls_pair(self.tls_cert, self.tls_key)
        if not self.tls and (self.tls_ca or self.tls_cert or self.tls_server_name):
            raise ValueError("tls_ca, tls_cert, tls_key and tls_server_name need tls = true")
        return self


class DicomSettings(_Strict):
    ae_title: str = Field("ILM", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    maximum_pdu_size: int = Field(0, ge=0)
    # C-MOVE destinations by AE title, e.g. [dicom.destinations.PACS] host="10.0.0.5" port=104
    destinations: dict[str, DestinationSettings] = {}
    # C-GET/C-MOVE of a study being restored from an archive tier: wait up to
    # this long for the restore, then fail with a status saying so.
    retrieve_wait_seconds: float = Field(0.0, ge=0)
    # Access control (docs/security.md): associations from other calling AE titles
    # or other addresses are rejected (A-ASSOCIATE-RJ). Empty: allow all.
    allowed_calling_aets: list[str] = []
    allowed_hosts: list[str] = []      # IP addresses or networks: "10.0.0.5", "10.1.0.0/16"
    # DICOM over TLS on ``port`` (PS3.15 B.9): certificate and key (PEM); with
    # tls_ca, peers must present a certificate signed by that CA.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _ae_title(v)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, v: list[str]) -> list[str]:
        return [_ae_title(a) for a in v]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            try:
                ipaddress.ip_network(h.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{h!r} is not an IP address or network such as '10.0.0.5' or '10.1.0.0/16'") from None
        return [h.strip() for h in v]

    @model_validator(mode="after")
    def _tls(self) -> "DicomSettings":
        _tls_pair(self.tls_cert, self.tls_key)
        if self.tls_ca and not self.tls_cert:
            raise ValueError("tls_ca (client certificates) needs tls_cert and tls_key")
        return self


def _ae_title(v: str) -> str:
    if not v.strip() or len(v.strip()) > 16 or "\\" in v or any(ord(c) < 32 for c in v):
        raise ValueError(f"{v!r}: an AE title is 1-16 printable characters without backslash")
    return v.strip()


def _tls_pair(cert: str, key: str) -> None:
    if bool(cert) != bool(key):
        raise ValueError("tls_cert and tls_key go together: give both or neither")


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


class HttpSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_request_bytes: int = Field(2 * 1024**3, gt=0)
    # API tokens and roles on every route but /health (docs/security.md). On by
    # default, also on loopback; false is refused unless host is a loopback address.
    auth: bool = True
    # HTTPS: certificate (chain) and key, PEM.
    tls_cert: str = ""
    tls_key: str = ""

    @model_validator(mode="after")
    def _checks(self) -> "HttpSettings":
        _tls_pair(self.tls_cert, self.tls_key)
        if not self.auth and not is_loopback(self.host):
            raise ValueError(f"auth = false is only allowed when http.host is a loopback address, not {self.host!r}: "
                             "anyone on the network could read and change the archive")
        return self


class LifecycleSettings(_Strict):
    quarantine_days: int = Field(30, ge=0)
    move_workers: int = Field(4, ge=1, le=64)
    max_mb_per_s: float = Field(0.0, ge=0)
    maintenance_window: str = ""
    schedule_policy: str = ""
    schedule_interval_minutes: int = Field(1440, ge=1)
    # Promotions (on read, prefetch of priors) starting in any minute; 0 = no cap. See docs/tiers.md.
    promotions_per_minute: int = Field(30, ge=0)

    @field_validator("maintenance_window")
    @classmethod
    def _window(cls, v: str) -> str:
        if v:
            from ilm.lifecycle.limits import parse_window

            parse_window(v)
        return v


class FixitySettings(_Strict):
    """Fixity checks (ilm verify) and the continuous scrub of ilm serve (docs/security.md)."""

    scrub_mb_per_s: float = Field(default=20.0, ge=0)     # the scrub's read rate; 0 = no scrub in ilm serve
    scrub_interval_days: int = Field(default=30, ge=1)    # re-check each copy at most this often
    verify_mb_per_s: float = Field(default=0.0, ge=0)     # ilm verify's default rate; 0 = no limit
    workers: int = Field(default=4, ge=1, le=64)          # parallel reads


class Settings(_Strict):
    home: Path
    config_file: Path | None = None
    audit: AuditSettings = Field(default_factory=AuditSettings)
    catalog: CatalogSettings = CatalogSettings()
    ingest: IngestSettings = IngestSettings()
    dicom: DicomSettings = DicomSettings()
    http: HttpSettings = HttpSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    fixity: FixitySettings = FixitySettings()
    tiers: dict[str, TierSettings] = Field(min_length=1)

    @property
    def replica_tiers(self) -> frozenset[str]:
        """Tiers named in some tier's ``replicas``: they hold replica copies only."""
        return frozenset(r for t in self.tiers.values() for r in t.replicas)

    @property
    def lifecycle_tiers(self) -> list[str]:
        """The tiers studies live and move on, hottest first (every tier but the replica tiers)."""
        return [n for n in self.tiers if n not in self.replica_tiers]

    @property
    def catalog_url(self) -> str:
        return self.catalog.url or f"sqlite:///{self.home / 'catalog.sqlite'}"

    @property
    def ingest_tier(self) -> str:
        return self.ingest.tier or next(iter(self.tiers))

    @property
    def conflicts_path(self) -> Path:
        return self.resolve(self.ingest.conflicts_dir)

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to ILM_HOME unless absolute."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.home / p


DEFAULT_CONFIG = """\
# ilm configuration. Environment variables override single keys:
# ILM_CATALOG_URL, ILM_DICOM_AE_TITLE, ILM_DICOM_HOST, ILM_DICOM_PORT,
# ILM_HTTP_HOST, ILM_HTTP_PORT. Relative paths are relative to ILM_HOME.

[catalog]
# SQLAlchemy URL. Empty: an embedded SQLite file in ILM_HOME.
# PostgreSQL: "postgresql+psycopg://user@127.0.0.1:5432/ilm"
url = ""
# SQLite only: "full" (default) flushes every commit to disk, so an instance ilm
# has answered for keeps its catalog row through a power failure; "normal" is
# faster and may lose the last commits on a power failure (docs/operations.md).
sqlite_synchronous = "full"

[ingest]
# The tier new instances are written to (default: the first tier below).
tier = "hot"
# Where a file that reuses a stored SOP Instance UID with other content is kept aside.
conflicts_dir = "conflicts"

[dicom]
ae_title = "ILM"
host = "127.0.0.1"     # bind address; 0.0.0.0 to accept from the network
port = 11112
maximum_pdu_size = 0    # 0 = unlimited, several times faster for large images
# allowed_calling_aets = ["CT1", "PACS"]   # others get A-ASSOCIATE-RJ; empty: everyone (docs/security.md)
# allowed_hosts = ["10.20.0.0/16"]         # IP addresses or networks; empty: everyone
# tls_cert = "tls/archive.pem"             # DICOM over TLS on port (PEM); tls_key too
# tls_key = "tls/archive.key"
# tls_ca = "tls/hospital-ca.pem"           # peers need a client certificate from this CA
# [dicom.destinations.PACS]                # a C-MOVE destination (and Storage Commitment requester)
# host = "10.20.0.5"
# port = 104
# tls = true                               # DICOM over TLS to it; its certificate checked against tls_ca
# tls_ca = "tls/hospital-ca.pem"           # (default: the system's CAs) and for the name host
# tls_cert = "tls/archive-client.pem"      # ilm's client certificate, if PACS asks for one; tls_key too
# tls_key = "tls/archive-client.key"

[http]
host = "127.0.0.1"
port = 8080
auth = true             # API tokens required (ilm tokens create); see docs/security.md
# tls_cert = "tls/archive.pem"   # HTTPS (PEM); tls_key too
# tls_key = "tls/archive.key"

[lifecycle]
quarantine_days = 30          # expired studies stay restorable this long before purge may delete them
move_workers = 4              # concurrent copies during a move (into an S3 tier: its upload_workers)
max_mb_per_s = 0              # 0 = no limit on the bytes moved per second
maintenance_window = ""       # e.g. "22:00-06:00": apply moves data only inside it (local time)
schedule_policy = ""          # ilm serve plans this policy file every interval (see docs/policies.md)
schedule_interval_minutes = 1440
promotions_per_minute = 30      # promotions (on read, prefetch) starting per minute; 0 = no cap

[fixity]
# ilm serve re-reads every copy and checks its SHA-256 (docs/security.md, Fixity).
scrub_mb_per_s = 20             # read rate of the scrub; 0 = no scrub
scrub_interval_days = 30        # re-check each copy at most this often
verify_mb_per_s = 0             # default read rate of 'ilm verify'; 0 = no limit
# A second copy of every instance, the source of repairs: add to a tier
#   replicas = ["mirror"]
# and define [tiers.mirror] (an online tier that holds replicas only).

# DICOM audit messages (IHE ATNA): imports, queries, retrievals, deletions, start/stop,
# to a file and/or an audit record repository over syslog (docs/security.md).
# [audit]
# file = "audit/atna.log"
# syslog_host = "arr.example.org"
# syslog_port = 6514
# syslog_tls = true

# Tiers, hottest first: their order here is their order in the lifecycle.
# Costs are per GB-month of storage and per GB retrieved; they drive the cost
# reports. Prices below are list prices of 2025 (see docs/tiers.md).

[tiers.hot]
kind = "filesystem"
path = "tiers/hot"
cost_per_gb_month = 0.10          # enterprise SAN/NAS, all-in
retrieval_cost_per_gb = 0.0
retrieval_latency_seconds = 0
min_storage_days = 0
fsync = true                      # flush each object to disk before acknowledging it
# cooling_days = 31               # studies not read for 31 days move to the next tier (docs/tiers.md)

[tiers.warm]
kind = "filesystem"
path = "tiers/warm"
cost_per_gb_month = 0.03          # capacity disk
retrieval_cost_per_gb = 0.0
retrieval_latency_seconds = 0
min_storage_days = 0
retrieval_policy = "on_read"      # a read brings a study back to hot; "prefetch_priors" also
                                  # promotes a patient's priors when a new study arrives; "never"

[tiers.archive]
# Behaves like tape or S3 Glacier: a read needs a restore (ilm recall) that
# completes after retrieval_latency_seconds; the restored copy is kept
# restored_copy_days on the hot tier, the archive copy stays. Here a folder
# with a short simulated latency; for Glacier Flexible Retrieval use an S3
# tier and hours (43200). See docs/tiers.md.
kind = "filesystem"
path = "tiers/archive"
archive = true
retrieval_latency_seconds = 3
restored_copy_days = 7
cost_per_gb_month = 0.0036        # S3 Glacier Flexible Retrieval
retrieval_cost_per_gb = 0.01
min_storage_days = 90

# An S3 tier (AWS, MinIO, SeaweedFS, ...). Credentials from the keys below or
# the usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment variables.
# [tiers.cloud]
# kind = "s3"
# bucket = "ilm-archive"
# prefix = ""
# endpoint_url = "http://127.0.0.1:8333"
# region = "us-east-1"
# upload_workers = 8              # concurrent uploads of a move into this tier
# cost_per_gb_month = 0.0125      # S3 Standard-IA
# retrieval_cost_per_gb = 0.01
# retrieval_latency_seconds = 0
# min_storage_days = 30
# put_cost_per_1000 = 0.01        # requests, per 1,000 (docs/cost.md)
# get_cost_per_1000 = 0.001
# worm = "compliance"             # immutable copies: S3 Object Lock, created with the bucket
# retain_days = 3650              #   each copy locked 10 years from its write (docs/security.md)
# encryption = "envelope"         # AES-256-GCM by ilm, master keys in keyring.toml: run 'ilm keys new'
# sse = "AES256"                  # and/or server-side encryption by the store (docs/security.md)
"""


def default_home() -> Path:
    return Path(os.environ.get("ILM_HOME") or "ilm-demo").expanduser().absolute()


def write_default_config(home: Path, *, overwrite: bool = False) -> Path:
    """Write the commented default config to ``home/ilm.toml`` and return its path."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_NAME
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists (use --force to overwrite)")
    path.write_text(DEFAULT_CONFIG, encoding="utf-8")
    return path


_ENV_KEYS = {
    "ILM_CATALOG_URL": ("catalog", "url"),
    "ILM_DICOM_AE_TITLE": ("dicom", "ae_title"),
    "ILM_DICOM_HOST": ("dicom", "host"),
    "ILM_DICOM_PORT": ("dicom", "port"),
    "ILM_HTTP_HOST": ("http", "host"),
    "ILM_HTTP_PORT": ("http", "port"),
}


def load_settings(
    home: Path | None = None,
    config_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Read and validate the config; raise ConfigError naming file, key and problem."""
    env = dict(os.environ) if env is None else env
    home = (home or Path(env.get("ILM_HOME") or "ilm-demo")).expanduser().absolute()
    path = config_file or (Path(env["ILM_CONFIG"]) if env.get("ILM_CONFIG") else home / CONFIG_NAME)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (run 'ilm init' to write a default)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    for var, (section, key) in _ENV_KEYS.items():
        if env.get(var):
            raw.setdefault(section, {})
            if isinstance(raw[section], dict):
                raw[section][key] = env[var]
    for reserved in ("home", "config_file"):
        if reserved in raw:
            raise ConfigError(f"{path}: key '{reserved}': not allowed in the file")
    try:
        settings = Settings(home=home, config_file=path, **raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not str(p) in ("filesystem", "s3"))
        raise ConfigError(f"{path}: key '{loc}': {err['msg']}") from None
    if settings.ingest.tier and settings.ingest.tier not in settings.tiers:
        raise ConfigError(
            f"{path}: key 'ingest.tier': no tier named {settings.ingest.tier!r} "
            f"(tiers: {', '.join(settings.tiers)})"
        )
    _check_replicas(path, settings)
    return settings


def _check_replicas(path: Path, settings: Settings) -> None:
    """A replica tier exists, is online and whole-object, and holds replicas only."""
    for name, t in settings.tiers.items():
        for r in t.replicas:
            key = f"{path}: key 'tiers.{name}.replicas'"
            if r not in settings.tiers:
                raise ConfigError(f"{key}: no tier named {r!r} (tiers: {', '.join(settings.tiers)})")
            rt = settings.tiers[r]
            if r == name:
                raise ConfigError(f"{key}: a tier cannot be its own replica")
            if rt.archive or rt.pack_studies:
                raise ConfigError(f"{key}: replica tier {r!r} must be an online tier storing one object per "
                                  "instance (not archive, not pack_studies)")
            if rt.replicas:
                raise ConfigError(f"{key}: replica tier {r!r} has replicas of its own (one level only)")
    if settings.ingest_tier in settings.replica_tiers:
        raise ConfigError(f"{path}: key 'ingest.tier': {settings.ingest_tier!r} is a replica tier")
