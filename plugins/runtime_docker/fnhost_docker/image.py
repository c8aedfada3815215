"""The image function containers run: built locally by fnhost, never pulled from a registry.

By default it is `FROM scratch` plus the Deno binary of the installed `deno` Python package,
the shared libraries that binary links (as `ldd` resolves them, with the dynamic loader),
the in-container bootstrap and a passwd entry for an unprivileged user. With a configured
`base_image` it is that image plus the binary and the bootstrap (the base must provide a
glibc). The tag carries the Deno version and a digest of everything that went in, so a
Deno upgrade or a bootstrap change builds a new image and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import fnhost_deno_worker
from fnhost.errors import ConfigError, Unavailable

log = logging.getLogger("fnhost.docker")

# Inside the image.
DENO = "/opt/fnhost/deno"
BOOTSTRAP = "/opt/fnhost/bootstrap.ts"
USER = "10001:10001"
# Bump when the build context changes in a way the digest does not see (the Dockerfile,
# the Deno version and binary size and the bootstrap are in the digest already).
RECIPE = "1"
IMAGE_LABEL = "fnhost.image"

_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")
PASSWD = "root:x:0:0::/:/sbin/nologin\nfnhost:x:10001:10001:fnhost function:/tmp:/sbin/nologin\n"
GROUP = "root:x:0:\nfnhost:x:10001:\n"


@dataclass(frozen=True)
class RuntimeImage:
    """What goes into the image, and the tag that names exactly that content."""

    repository: str  # e.g. "fnhost-runtime"
    deno_binary: Path
    deno_version: str
    bootstrap: str
    base_image: str | None

    @classmethod
    def describe(cls, repository: str, base_image: str | None) -> RuntimeImage:
        """The image this installation needs: cheap, no engine and no subprocess."""
        import deno

        binary = Path(deno.find_deno_bin())
        if not binary.is_file():
            raise ConfigError(f"runtime.docker: the deno binary {binary} does not exist")
        return cls(
            repository=repository,
            deno_binary=binary,
            deno_version=metadata.version("deno"),
            bootstrap=fnhost_deno_worker.BOOTSTRAP.read_text(),
            base_image=base_image,
        )

    @property
    def tag(self) -> str:
        digest = hashlib.sha256()
        for part in (
            RECIPE,
            self.dockerfile(),
            self.deno_version,
            str(self.deno_binary.stat().st_size),
            self.bootstrap,
            self.base_image or "scratch",
        ):
            digest.update(part.encode() + b"\0")
        return f"{self.repository}:deno-{self.deno_version}-{digest.hexdigest()[:12]}"

    def dockerfile(self) -> str:
        base = self.base_image or "scratch"
        lines = [
            f"FROM {base}",
            "COPY rootfs/ /",
            f"USER {USER}",
            "ENV HOME=/tmp DENO_DIR=/tmp/deno DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1 NO_COLOR=1",
            "WORKDIR /tmp",
            f'ENTRYPOINT ["{DENO}"]',
        ]
        return "\n".join(lines) + "\n"

    def context(self) -> bytes:
        """The build context as a tar archive: the Dockerfile and the root filesystem."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            _add_bytes(tar, "Dockerfile", self.dockerfile().encode(), 0o644)
            _add_file(tar, "rootfs" + DENO, self.deno_binary, 0o755)
            _add_bytes(tar, "rootfs" + BOOTSTRAP, self.bootstrap.encode(), 0o644)
            if self.base_image is None:
                for library in linked_libraries(self.deno_binary):
                    _add_file(tar, "rootfs" + library, Path(library).resolve(), 0o755)
                _add_bytes(tar, "rootfs/etc/passwd", PASSWD.encode(), 0o644)
                _add_bytes(tar, "rootfs/etc/group", GROUP.encode(), 0o644)
                _add_dir(tar, "rootfs/tmp", 0o1777)
        return buffer.getvalue()


def linked_libraries(binary: Path) -> list[str]:
    """Absolute paths of the shared libraries `binary` loads, its loader included."""
    try:
        output = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(
            f"cannot list the libraries of {binary} with ldd ({exc}); "
            "set runtime.docker.base_image to build on a base image instead"
        ) from None
    libraries = []
    for line in output.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            libraries.append(match.group(1))
    return libraries


def ensure_image(
    client: Any, image: RuntimeImage, progress: Callable[[str], None], force: bool = False
) -> bool:
    """Build the image unless the engine has it already (or `force`); True when it was
    built. Older images of the same repository are removed when no container uses them.

    Synchronous (the docker SDK is): run it in a thread. `progress` gets one line per
    build step.
    """
    import docker.errors

    tag = image.tag
    if not force:
        try:
            client.images.get(tag)
            return False
        except docker.errors.ImageNotFound:
            pass
    progress(f"building the function image {tag} (Deno {image.deno_version}) ...")
    context = image.context()
    progress(f"sending a build context of {len(context) / 2**20:.0f} MiB to the engine")
    try:
        for chunk in client.api.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            nocache=force,
            labels={IMAGE_LABEL: image.deno_version},
            decode=True,
        ):
            if "error" in chunk:
                raise Unavailable(f"building the function image failed: {chunk['error'].strip()}")
            line = str(chunk.get("stream", "")).strip()
            if line.startswith("Step "):
                progress(line)
    except docker.errors.APIError as exc:
        raise Unavailable(f"building the function image failed: {exc.explanation}") from None
    progress(f"built {tag}")
    _remove_older_images(client, image.repository, tag)
    return True


def _remove_older_images(client: Any, repository: str, keep: str) -> None:
    """Images of earlier Deno versions or bootstraps: removed unless a container uses one
    (another fnhost of an older version may still run on this engine)."""
    import docker.errors

    outdated = [
        tag
        for other in client.api.images(name=repository, filters={"label": IMAGE_LABEL})
        for tag in other.get("RepoTags") or []
        if tag != keep
    ]
    # and the untagged images that a forced build of the same tag leaves behind
    dangling = client.api.images(filters={"label": IMAGE_LABEL, "dangling": True}, quiet=True)
    for name in [*outdated, *dangling]:
        try:
            client.api.remove_image(name)
            log.info("removed the outdated image %s", name)
        except docker.errors.APIError:
            pass  # in use, or removed meanwhile


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, source: Path, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = source.stat().st_size
    info.mode = mode
    with source.open("rb") as handle:
        tar.addfile(info, handle)


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)
