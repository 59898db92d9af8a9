"""The process around the file system: mount, daemonize, serve, shut down.

The order follows s3ql's mount.py: check everything that can be checked
before touching the kernel, mount, go to the background only once the mount
is there (so the command returns when the mount is ready, like sshfs), then
serve until a signal or an unmount, and always unmount on the way out.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import logging.handlers
import os
import resource
import signal
import socket
import ssl
import stat
import sys

import pyfuse3
import trio

from .fuse import intake as fuse_intake
from .core.access import Identity
from .http.agfs import AGFSRoutes
from .settings import (BackendSettings, HTTPSettings, MountConfig, is_loopback,
                     token_in_the_clear)
from .fuse.operations import StreamFS
from .http.door import HTTPDoor
from .logs import INTERVAL, RepeatedLog
from .core.memory import MemoryStore
from .core.tree import Tree, TreeStore
from .mountinfo import is_mounted

__all__ = ["MountError", "mount", "is_mounted"]

log = logging.getLogger(__name__)

#: pyfuse3 serves each request in a worker task and a blocked read holds its
#: task until data comes; when all are blocked nobody reads /dev/fuse and the
#: mount hangs. Tasks are cheap, so allow far more than the readers we support.
MAX_WORKERS = 100_000

#: Idle worker tasks pyfuse3 keeps instead of ending them. With the default
#: of 1, every message to N blocked readers ended N-1 workers and started N
#: new ones (each with a fresh 1 MiB request buffer); keeping 128 cut daemon
#: CPU by a fifth and p99 latency with 100 readers from 11 ms to 5 ms, for
#: about 6 MB more memory after heavy writes.
MIN_IDLE_WORKERS = 128

#: On shutdown, how long readers get to drain their queues and close their
#: files before the unmount.
DRAIN_GRACE = 2.0

#: How often to look whether someone unmounted us lazily (fusermount3 -u -z),
#: which the kernel does not tell a daemon while files are still open.
UNMOUNT_POLL_INTERVAL = 1.0

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: A background task that fails is started again after this long, doubling
#: up to :data:`MAX_RESTART_DELAY`: a daemon out of descriptors for a moment
#: must not end every stream.
RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 10.0

#: How often to look whether the streams freed enough to trim the heap, and how much.
#: A user making streams at the cap turns shed history into bookkeeping at about
#: 24 MB/s (4,000 streams a second), and the freed heap stays resident until
#: trimmed: every 2 s after 16 MB the daemon peaked 29 MiB over the cap, every
#: 0.25 s after 4 MiB 9-15 (tests/mounted/test_memory_cap.py; a trim costs under 1 ms).
TRIM_INTERVAL = 0.25
TRIM_AFTER_FREEING = 4 * 1024 * 1024

failures = RepeatedLog(log)


class MountError(Exception):
    """Mounting failed; the message is shown to the user as it is."""


def mount(config: MountConfig) -> int:
    """Mount and serve ``config``; return the exit status."""
    mountpoint = os.path.realpath(config.mountpoint)
    check_mountpoint(mountpoint)
    check_fuse_device()
    raise_file_limit()
    keep_request_buffers_off_the_heap()
    # The tree is kept by its store: this host's alone, or shared with every
    # host that names the same Redis (--backend), which orders its changes.
    tree = Tree(config.settings, os.getuid(), os.getgid(), store=store_for(config.backend))
    fs = StreamFS(tree)
    door = http_door(config.http, tree, fs)
    options = fuse_options(config)
    if config.foreground:
        setup_logging(config, background=False)
        start(fs, mountpoint, options)
        return serve(fs, door, mountpoint)
    return daemonize(fs, door, mountpoint, options, config)


def store_for(backend: BackendSettings) -> TreeStore:
    """Where the tree and its streams are kept: in memory, or shared through
    Redis (once it has answered) with every host that names the same one."""
    if backend.url is None:
        return MemoryStore()
    # Imported here: coredis takes 0.6 s to import, which a mount without
    # a backend should not pay.
    from .stores.redis import BackendError, RedisStore, probe_backend
    try:
        probe_backend(backend)
        return RedisStore(backend)
    except BackendError as e:
        raise MountError(str(e)) from None


def http_door(settings: HTTPSettings, tree: Tree,
              fs: StreamFS | None = None) -> HTTPDoor | None:
    """The HTTP door, if asked for, once its addresses are known to be free.

    Its /metrics counts ``fs``'s requests by operation (about 260 ns a request).
    """
    if not settings.addresses:
        return None
    for address in settings.addresses:
        check_address(address)
    token = owner = None
    if settings.token_file:
        try:
            with open(settings.token_file, "rb") as f:
                token = f.readline().strip()
                owner = Identity.of_user(os.fstat(f.fileno()).st_uid)
        except OSError as e:
            raise MountError(f"cannot read {settings.token_file}: {e.strerror}") from None
    # Anonymous requests act as nobody on loopback; off it a token is required.
    anonymous = all(isinstance(a, str) or is_loopback(a[0]) for a in settings.addresses)
    if exposed := token_in_the_clear(settings):
        print(f"streamfs-fuse: warning: --http {exposed} is not loopback and serves plain "
              "HTTP: the token travels in the clear (give --http-cert and --http-key, or "
              "--http-require-tls to refuse this)", file=sys.stderr)
    # Imported here: prometheus_client takes 50 ms to import, which a mount
    # without HTTP should not pay.
    from .http.metrics import MetricsRoutes, count_fuse_requests
    routes = MetricsRoutes(AGFSRoutes(tree, settings), tree, None, settings)
    if fs is not None:
        routes.fuse_requests = count_fuse_requests(fs)
    door = HTTPDoor(routes, settings, token=token, token_owner=owner, anonymous=anonymous,
                    tls=tls_context(settings), budget=tree.budget)
    routes.door = door
    return door


def tls_context(settings: HTTPSettings) -> ssl.SSLContext | None:
    """The server side of TLS from --http-cert and --http-key, if given."""
    if settings.cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as e:
        raise MountError(f"cannot use --http-cert {settings.cert_file} and --http-key "
                         f"{settings.key_file}: {getattr(e, 'strerror', None) or e}") from None
    return context


def check_address(address: tuple[str, int] | str) -> None:
    """Fail now, in one line, if the door could not listen at ``address``."""
    if isinstance(address, str):
        if not os.path.isdir(os.path.dirname(address)):
            raise MountError(f"cannot serve HTTP on unix:{address}: its directory does not exist")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(address)
            except (FileNotFoundError, ConnectionRefusedError):
                return  # free, or a socket a killed daemon left: the door replaces it
            except OSError as e:
                raise MountError(f"cannot serve HTTP on unix:{address}: {e.strerror}") from None
        raise MountError(f"cannot serve HTTP on unix:{address}: another program listens there")
    host, port = address
    try:
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
    except OSError as e:
        raise MountError(f"cannot serve HTTP on {host}:{port}: {e.strerror}") from None


def fuse_options(config: MountConfig) -> set[str]:
    options = {"default_permissions", "subtype=streamfs-fuse"} | config.fuse_options
    if not any(o.startswith("fsname=") for o in options):
        options.add("fsname=streamfs")
    if config.debug:
        options.add("debug")
    return options


def raise_file_limit() -> None:
    """Allow as many open files as the hard limit: one per process with readers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def keep_request_buffers_off_the_heap() -> None:
    """Give pyfuse3's 1 MiB request buffers their own mappings, and 1 MiB chunks warm heap.

    Each worker task has a request buffer of max_write + 4 KiB, and every
    blocked read holds a worker. glibc's dynamic mmap threshold soon puts such
    buffers on the heap, in memory that freed 1 MiB chunks had filled, so each
    idle reader kept about 0.9 MB resident (1,000 readers: +540 MB). A fixed
    threshold just above 1 MiB keeps chunks (1 MiB + a bytes header) on the heap
    and maps each buffer freshly, where only the pages used count (1,000
    readers: +11 MB).

    That also fixes the trim threshold at 128 KiB, so a freed chunk at the top
    of the heap went back to the kernel and the next one was faulted in again
    (133,000 page faults per 4 GiB from one writer to one reader). Keeping a
    free top instead (a trim threshold of 32 MiB, or a top pad of 4 MiB) gave
    buffers resident heap again: +570 MB for 1,000 idle readers. A top pad
    just under a request buffer keeps the heap's top warm for the next chunk
    but too small for any buffer: 11,400 faults per 4 GiB, 1 MiB throughput
    +10-20%, and idle readers cost what they did. Not with the heap on huge
    pages (``glibc.malloc.hugetlb``, README): glibc then grows and trims the
    heap in 2 MiB steps, the top can hold a buffer whatever the pad, and 1,000
    idle readers cost +190 to +320 MB.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return  # not glibc
    M_MMAP_THRESHOLD, M_TOP_PAD = -3, -2
    mallopt(M_MMAP_THRESHOLD, 1024 * 1024 + 2048)
    if not heap_on_huge_pages():
        mallopt(M_TOP_PAD, 1024 * 1024 - 64 * 1024)


def heap_on_huge_pages() -> bool:
    """Whether GLIBC_TUNABLES asks glibc's malloc for transparent huge pages."""
    tunables = dict(item.partition("=")[::2]
                    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"))
    return tunables.get("glibc.malloc.hugetlb", "0") not in ("", "0")


def check_mountpoint(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(
                f"{path} is a dead mount left by a daemon that was killed;"
                f" run 'fusermount3 -u {path}' first"
            ) from None
        raise MountError(f"cannot use mountpoint {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    if is_mounted(path):
        raise MountError(f"{path} is already mounted (unmount it with 'fusermount3 -u {path}')")


def check_fuse_device() -> None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except FileNotFoundError:
        raise MountError("/dev/fuse does not exist: load the fuse kernel module"
                         " (modprobe fuse) or, in a container, pass the device in") from None
    except PermissionError:
        if os.geteuid() == 0:
            raise MountError("/dev/fuse: permission denied") from None
        return  # fusermount3 opens it for unprivileged users
    except OSError as e:
        raise MountError(f"cannot open /dev/fuse: {e.strerror}") from None
    os.close(fd)


def start(fs: StreamFS, mountpoint: str, options: set[str]) -> None:
    try:
        pyfuse3.init(fs, mountpoint, options)
    except RuntimeError as e:
        raise MountError(f"cannot mount on {mountpoint}: {e}") from None
    log.info("mounted on %s", mountpoint)


def serve(fs: StreamFS, door: HTTPDoor | None, mountpoint: str) -> int:
    """Serve requests until a signal or an unmount, then unmount."""
    try:
        trio.run(_serve, fs, door, mountpoint)
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mountpoint)
    return 0


async def _serve(fs: StreamFS, door: HTTPDoor | None, mountpoint: str) -> None:
    store = fs.tree.store
    async with trio.open_nursery() as nursery:
        # A shared tree is loaded before the first request is answered.
        await nursery.start(store.run)
        nursery.start_soon(_stop_on_signal, fs, door)
        nursery.start_soon(keep_running, "the unmount watcher", _watch_unmount, fs, mountpoint)
        nursery.start_soon(keep_running, "the signal watcher", fs.signals.run)
        nursery.start_soon(_flush_logs)
        nursery.start_soon(keep_running, "the heap trimmer", _trim_heap, fs.tree)
        if door is not None:
            await nursery.start(door.serve)
        fuse_intake.install()
        try:
            await pyfuse3.main(min_tasks=MIN_IDLE_WORKERS, max_tasks=MAX_WORKERS)
        except* ConnectionAbortedError:
            # /dev/fuse says ECONNABORTED once a lazy unmount lets the
            # connection go: the session is over, which is what we wanted.
            pass
        await store.withdraw()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(fs: StreamFS, door: HTTPDoor | None) -> None:
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        async for signum in signals:
            log.info("%s: ending all streams and unmounting", signal.Signals(signum).name)
            break
    fs.close_all_streams()
    # Readers now drain their queues and get EOF, writers get EPIPE; give them
    # a moment to finish and close their files (and HTTP responses their
    # bodies) before the connection goes away.
    with trio.move_on_after(DRAIN_GRACE):
        while fs.open_handles or (door is not None and door.active):
            await trio.sleep(0.05)
    pyfuse3.terminate()


async def keep_running(what: str, function, *args) -> None:
    """Run ``function`` for ever: a failure is logged and it starts again, backing off.

    No background task may end the daemon: out of descriptors, a read of
    /proc fails, and that must cost a moment, not every stream.
    """
    delay = RESTART_DELAY
    while True:
        started = trio.current_time()
        try:
            await function(*args)
            return
        except Exception as e:
            failures.error("%s failed; starting it again", what, exc_info=e)
        if trio.current_time() - started > MAX_RESTART_DELAY:
            delay = RESTART_DELAY
        await trio.sleep(delay)
        delay = min(delay * 2, MAX_RESTART_DELAY)


async def _flush_logs() -> None:
    """Report the repeats of rate-limited messages once their interval is over."""
    from .core import budget
    from .fuse import operations
    from .http import door
    while True:
        await trio.sleep(INTERVAL)
        for repeated in (failures, door.failures, operations.failures, budget.refusals):
            repeated.flush()


async def _trim_heap(tree: Tree) -> None:
    """Give the kernel back the heap that a burst of held data left free.

    glibc returns only the free top of its heap, so after 1,000 stalled HTTP
    readers let go of their chunks the daemon stayed at its peak RSS. Once the
    streams' data (rings and what readers hold) has fallen by
    :data:`TRIM_AFTER_FREEING` from its peak since the last trim,
    malloc_trim(0) releases the free pages inside the heap (1,000 stalled
    readers gone: 90 -> 56 MB, where it stayed at 90).
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return  # not glibc
    budget = tree.budget
    while True:
        await trio.sleep(TRIM_INTERVAL)
        if budget.peak - budget.used >= TRIM_AFTER_FREEING:
            budget.peak = budget.used
            malloc_trim(0)


async def _watch_unmount(fs: StreamFS, mountpoint: str) -> None:
    while True:
        try:
            if not is_mounted(mountpoint):
                break
        except OSError as e:  # out of descriptors, say: look again later
            failures.warning("cannot read the mount table: %s", e.strerror)
        await trio.sleep(UNMOUNT_POLL_INTERVAL)
    # Lazily unmounted: end the streams so readers close their files and the
    # kernel can let the connection go, which ends pyfuse3.main().
    log.info("%s was unmounted: ending all streams", mountpoint)
    fs.close_all_streams()


def daemonize(fs: StreamFS, door: HTTPDoor | None, mountpoint: str,
              options: set[str], config: MountConfig) -> int:
    """Mount in a background child; return once the mount is ready or failed."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_write)
        with os.fdopen(ready_read, "rb") as pipe:
            report = pipe.read()
        if report == b"ready":
            return 0
        os.waitpid(pid, 0)
        raise MountError(report.decode(errors="replace") or "the daemon died before mounting")
    code = 1
    try:
        os.close(ready_read)
        os.setsid()
        try:
            start(fs, mountpoint, options)
        except MountError as e:
            os.write(ready_write, str(e).encode())
            return 1  # the finally clause exits with code 1
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        setup_logging(config, background=True)
        os.write(ready_write, b"ready")
        os.close(ready_write)
        code = serve(fs, door, mountpoint)
    except BaseException:
        log.exception("the daemon failed")
    finally:
        logging.shutdown()
        os._exit(code)


def setup_logging(config: MountConfig, *, background: bool) -> None:
    level = logging.WARNING
    if config.verbosity == 1:
        level = logging.INFO
    elif config.verbosity > 1 or config.debug:
        level = logging.DEBUG
    if background:
        handler: logging.Handler = (
            logging.handlers.SysLogHandler("/dev/log") if os.path.exists("/dev/log")
            else logging.NullHandler()
        )
        handler.setFormatter(logging.Formatter("streamfs-fuse[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    # pyfuse3 logs each worker task it starts and stops; only -d wants that.
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if config.debug else logging.INFO)
    # coredis logs each retry, such as loading a script again after Redis restarted.
    logging.getLogger("coredis").setLevel(logging.DEBUG if config.debug else logging.WARNING)
