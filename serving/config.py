"""Settings of the denoising server: ports, model instances, batching and the image size limit.

Only the standard library and numpy are imported here, so ``import serving`` works without PyTriton.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from runtime import InputError

TILE_MODEL = "moe_denoiser"
IMAGE_MODEL = "moe_denoiser_image"

# The image model's tensors: one optional input per pixel type, and the output of the same type.
IMAGE_INPUTS = {"uint8": "image_u8", "uint16": "image_u16"}
TWO_SCALES_PARAMETER = "two_scales"  # photo request parameter: the guard reads the noise at two scales (JPEG)
STRENGTH_PARAMETER = "strength"  # photo request parameter: the share of the change kept, "0" to "1" (a string)
SIGMA_PARAMETER = "sigma"  # photo request parameter: the noise std on [0, 1] pixels, for the guard (a string)
GUARD_PARAMETER = "guard"  # photo request parameter: false turns the clean-input guard off for that photo
IMAGE_OUTPUTS = {"uint8": "denoised_u8", "uint16": "denoised_u16"}
GUARD_OUTPUT = "guard"  # photo response: the clean-input guard's decision, one JSON string ("null": no guard)
SETTINGS_OUTPUT = "settings"  # photo response: how the server denoised it (runner, overlap, ...), one JSON string

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # 16.8 MP; about 65,000 tiles at the default overlap
MAX_IMAGE_PIXELS_LIMIT = 1 << 30  # a gigapixel: 3 GB of 8-bit RGB in one request (10**30 hung the start, planning tiles)
LOOPBACK = "127.0.0.1"


def check_log_file(path: Path) -> None:
    """InputError for a log file that Triton's lines would be appended to but that holds no text (``--log-file
    photo.png`` appended the log into the photo), that is a folder, or that cannot be appended to or made (Triton
    then logged to the console instead, without a word: ``--log-file /proc/x.log``, a read-only file, a folder
    that does not exist)."""
    if path.is_dir():
        raise InputError(f"--log-file {path} is a folder; give a file path for Triton's log")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(4096)
        if b"\0" in head or head.startswith(b"\x89PNG") or head[:3] == b"\xff\xd8\xff":
            raise InputError(f"--log-file {path} exists and is not a text log (Triton appends to it); choose a new "
                             f"path or a log file")
    existed = os.path.lexists(path)  # a link to a file not made yet is the user's: never made and removed here
    try:
        if existed:  # O_NONBLOCK: a FIFO without a reader is refused, not waited on
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            path.unlink()  # made when the server starts; a refused start leaves nothing
    except OSError as e:
        raise InputError(f"--log-file {path} cannot be {'appended to' if existed else 'made'} ({e.strerror or e}); "
                         f"give a file in a folder you can write to (Triton does not make folders)") from None


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` now (the kernel's choice; Triton cannot take port 0 itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only: 127.0.0.0/8, ::1, or a name such as
    localhost that resolves to those alone. A name that does not resolve counts as not loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(str(a[4][0]).split("%")[0]).is_loopback for a in found)


def check_listenable(host: str, port: int, option: str) -> None:
    """InputError unless a TCP server could listen on ``host``:``port`` now: an address that does not resolve or
    is not this machine's, or a port in use, shows in Triton only as a start-up timeout a minute later."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--address {host!r} is not a name or address this machine can resolve ({e}); give one of "
                         f"its addresses: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a port in TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is in use (another server, or a 'moe-denoise serve' still "
                                 f"running?); stop that, or pass {option} with another port (0: a free one)") from None
            low = ", and ports under 1024 need root" if port < 1024 else ""
            raise InputError(f"cannot listen on {host}:{port} ({e.strerror}); give an address of this machine, such "
                             f"as 127.0.0.1 or 0.0.0.0{low}") from None


@dataclass
class ServeConfig:
    """How ``moe-denoise serve`` runs Triton. Ports of 0 are replaced by free ports when the server starts.

    ``max_batch``: the largest batch (in tiles) Triton's dynamic batcher forms for ``moe_denoiser``, and the
    largest batch a client may send in one request. ``queue_delay_us``: how long the batcher may hold a request
    to wait for others (0: batch only what is already queued). ``dynamic_batching=False`` runs every request on
    its own, as sent. ``image_batch``: tiles per runner call when the image model denoises a photo (None: as
    ``moe-denoise denoise``, 64 for a runner on a CPU, 256 on a GPU). ``guard``:
    the image model applies the clean-input guard (``runtime.guard``, as ``moe-denoise denoise`` does by default).
    """

    address: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 1
    max_batch: int = 64
    queue_delay_us: int = 500
    dynamic_batching: bool = True
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    image_batch: int | None = None
    overlap: int = 16
    guard: bool = True
    image_instances: int = 1
    log_verbose: int = 0
    log_file: str | None = None  # Triton's log; None: a temporary file (printed to stdout with log_verbose)

    def validate(self) -> ServeConfig:
        def positive(name: str, value: int, lo: int = 1, hi: int | None = None) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
                bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                what = name if name == "image_instances" else f"--{name.replace('_', '-')} (ServeConfig.{name})"
                raise InputError(f"{what} must be an integer {bound}; got {value!r}")

        for name in ("http_port", "grpc_port", "metrics_port"):
            positive(name, getattr(self, name), 0, 65535)
        ports = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p]
        if len(set(ports)) != len(ports):
            raise InputError(f"the HTTP, gRPC and metrics ports must differ; got {self.http_port}, {self.grpc_port}, "
                             f"{self.metrics_port}. Pass distinct --http-port/--grpc-port/--metrics-port, or 0 for "
                             f"free ones")
        positive("instances", self.instances, 1, 64)
        positive("image_instances", self.image_instances, 1, 64)
        positive("max_batch", self.max_batch, 1, 65536)
        positive("queue_delay_us", self.queue_delay_us, 0, 10_000_000)
        positive("max_image_pixels", self.max_image_pixels, 1, MAX_IMAGE_PIXELS_LIMIT)
        if self.image_batch is not None:
            positive("image_batch", self.image_batch, 1, 65536)
        positive("overlap", self.overlap, 0, 31)
        if not isinstance(self.address, str) or not self.address:
            raise InputError(f"address must be a host address such as 127.0.0.1 or 0.0.0.0; got {self.address!r}")
        host, colon, port = self.address.rpartition(":")
        if colon and host and ":" not in host and port.isdigit():  # 127.0.0.1:8000: the port has options of its own
            raise InputError(f"--address {self.address} holds a port; give the address alone ({host}) and the port "
                             f"with --http-port (HTTP), --grpc-port or --metrics-port")
        if ":" in self.address:  # passed, then failed as if a port were taken; and 'host:port' URLs cannot hold it
            raise InputError(f"--address {self.address} is an IPv6 address; serve listens on IPv4 addresses and host "
                             f"names: use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
        if self.log_file:
            check_log_file(Path(self.log_file))
        return self

    def with_free_ports(self) -> ServeConfig:
        """A copy whose ports of 0 are replaced by ports that are free on ``address`` now."""
        host = LOOPBACK if self.address in ("0.0.0.0", "") else self.address
        chosen: set[int] = set()

        def pick(p: int) -> int:
            while not p or p in chosen:
                p = free_port(host)
            chosen.add(p)
            return p

        d = asdict(self)
        d.update(http_port=pick(self.http_port), grpc_port=pick(self.grpc_port), metrics_port=pick(self.metrics_port))
        return ServeConfig(**d)

    def with_address_resolved(self) -> ServeConfig:
        """A copy whose ``address``, a host name, is replaced by its IPv4 address: Triton takes addresses only, and
        bound HTTP and metrics to 255.255.255.255 for ``localhost``, never becoming ready."""
        try:
            ipaddress.ip_address(self.address)
            return self
        except ValueError:
            pass
        try:
            found = socket.getaddrinfo(self.address, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise InputError(f"--address {self.address!r} has no IPv4 address here ({e}); give one of this machine's "
                             f"addresses: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
        return replace(self, address=str(found[0][4][0]))

    def check_listenable(self) -> None:
        """Before Triton starts: every port (0: chosen when it starts) can be listened on at ``address``."""
        for port, option in ((self.http_port, "--http-port"), (self.grpc_port, "--grpc-port"),
                             (self.metrics_port, "--metrics-port")):
            if port:
                check_listenable(self.address, port, option)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
