"""Env var encryption at rest (Fernet: AES-128-CBC with HMAC-SHA256).

The key comes from `server.encryption_key` (or FNHOST_SERVER__ENCRYPTION_KEY); a
comma-separated list rotates keys (the first encrypts, all decrypt). Without one,
a key is generated on first start into `<data_dir>/secret.key` with mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from fnhost.config import Config
from fnhost.errors import ConfigError

KEY_FILE = "secret.key"


class EnvCipher:
    def __init__(self, configured_keys: str | None, data_dir: Path) -> None:
        self._configured = configured_keys
        self._data_dir = data_dir
        self._fernet: MultiFernet | None = None

    @classmethod
    def from_config(cls, config: Config) -> EnvCipher:
        return cls(config.server.encryption_key, config.data_path)

    def load(self) -> None:
        """Read or generate the key; call once before use (it may touch the disk)."""
        raw = self._configured or self._key_from_file()
        try:
            self._fernet = MultiFernet([Fernet(k.strip()) for k in raw.split(",") if k.strip()])
        except (ValueError, TypeError):
            raise ConfigError(
                "server.encryption_key: expected a Fernet key (32 url-safe base64 bytes)"
            ) from None

    def _key_from_file(self) -> str:
        path = self._data_dir / KEY_FILE
        if path.exists():
            return path.read_text().strip()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key().decode()
        write_secret_file(path, key)
        return key

    def encrypt(self, plaintext: str) -> str:
        return self._ready().encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._ready().decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "an env var cannot be decrypted with the configured encryption key"
            ) from None

    def _ready(self) -> MultiFernet:
        if self._fernet is None:
            self.load()
        assert self._fernet is not None
        return self._fernet


def write_secret_file(path: Path, content: str) -> None:
    """Create `path` with mode 0600 from the start (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content + "\n")
