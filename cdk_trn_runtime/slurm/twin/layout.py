"""Where one twin keeps its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """Where one twin keeps everything (all of it removed by ``down``)."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "twin.json"

    @property
    def conf(self) -> Path:
        """The login node's slurm.conf: the controller's, copied after each apply."""
        return self.root / "slurm.conf"

    @property
    def document(self) -> Path:
        """The cluster document the controller applies (the cloud's SSM parameter)."""
        return self.root / "document.json"

    @property
    def munge(self) -> Path:
        return self.root / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket.2"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def bin(self) -> Path:
        """Command doubles (``aws``), first on the PATH of the twin's controller processes."""
        return self.root / "bin"

    @property
    def jobenv(self) -> Path:
        return self.root / "jobenv"

    def instance(self, name: str) -> Path:
        return self.root / "instances" / name

    def device_root(self, name: str) -> Path:
        return self.instance(name) / "root"
