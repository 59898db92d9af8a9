"""HTTPS on the door (--http-cert, --http-key) against a real mount, with a certificate
made in the test by trustme, which curl (--cacert) and pyagfs (session.verify) check;
and the warning, or with --http-require-tls the refusal, of a token sent in the clear."""

from __future__ import annotations

import socket
import ssl
import subprocess
from functools import partial

import pytest
import requests
import trustme
from pyagfs import AGFSClient
from pyagfs.exceptions import AGFSClientError

from streamfs_fuse.testing import (AUTH, DAEMON, TOKEN, accepts, free_port, wait_until, write_token,
                                   xattr)

until = partial(wait_until, timeout=30.0)


@pytest.fixture
def certificate(tmp_path):
    """(CA file, certificate chain file, key file) for 127.0.0.1 and localhost."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    for i, pem in enumerate(issued.cert_chain_pems):
        pem.write_to_path(str(paths[1]), append=i > 0)
    issued.private_key_pem.write_to_path(str(paths[2]))
    return paths


def https_mount(mount_with, tmp_path, certificate, *args, host="127.0.0.1", name="mnt"):
    port = free_port()
    _, cert, key = certificate
    mnt = mount_with("--http", f"{host}:{port}", "--http-token", str(write_token(tmp_path)),
                     "--http-cert", str(cert), "--http-key", str(key), *args, name=name)
    until(lambda: accepts(port) or mnt.daemon.poll() is not None, what="the HTTPS port")
    assert mnt.daemon.poll() is None, mnt.log()
    return mnt, port


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)


def test_curl_streams_over_https_and_checks_the_certificate(mount_with, tmp_path, certificate):
    ca = certificate[0]
    mnt, port = https_mount(mount_with, tmp_path, certificate)
    url = f"https://127.0.0.1:{port}/live"
    upload = curl("--cacert", str(ca), "-H", AUTH, "--data-binary", "history\n", url)
    assert upload.returncode == 0 and b'"written": 8' in upload.stdout, upload.stderr
    # A reader over HTTPS gets the history, then live data written through the mount.
    reader = mnt.spawn(["curl", "-sSN", "--cacert", str(ca), "-H", AUTH, url])
    until(lambda: xattr(mnt / "live", "readers") == 1, what="the HTTPS reader")
    with open(mnt / "live", "ab", buffering=0) as writer:
        writer.write(b"x" * 1_000_000 + b"\n")
    (mnt / "live").unlink()  # the body ends cleanly: curl exits 0
    out, err = reader.communicate(timeout=30)
    assert reader.returncode == 0, err
    assert out == b"history\n" + b"x" * 1_000_000 + b"\n"
    # The certificate is checked: without the CA curl refuses it, and plain HTTP gets nothing.
    assert curl(f"https://127.0.0.1:{port}/").returncode == 60
    assert curl("--max-time", "5", f"http://127.0.0.1:{port}/").returncode != 0
    # HTTPS /metrics, with the token.
    metrics = curl("--cacert", str(ca), "-H", AUTH, f"https://localhost:{port}/metrics")
    assert b'streamfs_http_responses_total{status="200"}' in metrics.stdout


def test_pyagfs_verifies_the_certificate(mount_with, tmp_path, certificate):
    ca = certificate[0]
    mnt, port = https_mount(mount_with, tmp_path, certificate)
    client = AGFSClient(f"https://127.0.0.1:{port}")
    client.session.verify = str(ca)
    # Else requests takes REQUESTS_CA_BUNDLE from the environment over session.verify.
    client.session.trust_env = False
    client.session.headers["Authorization"] = f"Bearer {TOKEN}"
    try:
        client.write("/streamfs/cam", b"frame 1\n")
        response = client.cat("/streamfs/cam", stream=True)
        chunks = response.iter_content(chunk_size=None)
        assert next(chunks) == b"frame 1\n"
        (mnt / "cam").write_bytes(b"frame 2\n")
        assert next(chunks) == b"frame 2\n"
        response.close()
    finally:
        client.session.close()
    untrusting = AGFSClient(f"https://127.0.0.1:{port}")
    try:
        # pyagfs words every connection error as "refused": what failed is the check.
        with pytest.raises(AGFSClientError) as refused:
            untrusting.cat("/streamfs/cam")
        assert isinstance(refused.value.__context__, requests.exceptions.SSLError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value.__context__)
    finally:
        untrusting.session.close()


def start(*args, timeout=30):
    """The daemon in the background, as a user runs it: (exit status, stderr)."""
    result = subprocess.run([*DAEMON, *args], capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stderr


def test_a_token_in_the_clear_off_loopback_is_warned_of_or_refused(mount_with, tmp_path,
                                                                   certificate):
    token = str(write_token(tmp_path))
    mnt = mount_with("--http", f"0.0.0.0:{free_port()}", "--http-token", token)
    until(lambda: "warning" in mnt.log(), what="the warning")
    assert mnt.log().splitlines()[0].startswith(
        "streamfs-fuse: warning: --http 0.0.0.0:")
    assert "the token travels in the clear" in mnt.log()

    (tmp_path / "m2").mkdir()
    status, err = start(str(tmp_path / "m2"), "--http", "0.0.0.0:1", "--http-token", token,
                        "--http-require-tls")
    assert status == 2 and err.count("\n") == 1 and "give --http-cert and --http-key" in err
    _, cert, key = certificate
    status, err = start(str(tmp_path / "m2"), "--http", "127.0.0.1:1", "--http-cert", str(cert))
    assert status == 2 and "--http-cert and --http-key go together" in err
    status, err = start(str(tmp_path / "m2"), "--http", f"127.0.0.1:{free_port()}",
                        "--http-cert", str(key), "--http-key", str(key))
    assert status == 1 and err.count("\n") == 1 and "cannot use --http-cert" in err

    # With TLS, off loopback: no warning, and --http-require-tls is content.
    secure, _ = https_mount(mount_with, tmp_path, certificate, "--http-require-tls",
                            host="0.0.0.0", name="secure")
    assert "warning" not in secure.log()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def test_stalled_https_readers_hold_no_copy_of_what_they_are_sent(mount_with, tmp_path,
                                                                  certificate):
    """Each is sent 1 MiB chunks it never reads: TLS is handed 64 KiB at a time, so
    it holds a piece's encryption, not the chunk's (3 MiB each when handed all of it)."""
    mnt, port = https_mount(mount_with, tmp_path, certificate)
    live = mnt / "live"
    with open(live, "wb", buffering=0) as writer:
        for _ in range(6):
            writer.write(b"x" * (1 << 20))
    before = rss_mib(mnt.daemon.pid)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    count, sockets = 50, []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
            sock.sendall(b"GET /live HTTP/1.1\r\nhost: x\r\n" + AUTH.encode() + b"\r\n\r\n")
            sockets.append(sock)
        # Each sender took its first chunk off the queue, and the daemon went idle.
        until(lambda: xattr(live, "readers") == count
              and xattr(live, "queued_bytes") == count * 5 << 20, what="the senders")
        ticks = [cpu_ticks(mnt.daemon.pid)]

        def idle():
            ticks.append(cpu_ticks(mnt.daemon.pid))
            return ticks[-1] == ticks[-2]
        until(idle, interval=0.3, what="the daemon to go idle")
        grown = rss_mib(mnt.daemon.pid) - before
        assert grown < count * 0.5, f"{grown:.0f} MiB for {count} stalled HTTPS readers"
    finally:
        for sock in sockets:
            sock.close()
