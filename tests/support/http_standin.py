"""A local HTTP server standing in for the remote services the http tool reaches.

Started by a test (a thread on a 127.x.y.z address), it counts every TCP connection it
accepts (so a test can prove that a refused request never connected) and answers:

- ``/echo``: JSON ``{method, path, headers, body}`` of the request it got;
- ``/bytes/N``: N bytes with a Content-Length; ``/binary``: three bytes that are no UTF-8; ``/stream/N``: N bytes, no length, then close;
- ``/redirect?to=URL&status=302``: a redirect; ``/loop``: a redirect to itself;
- ``/status/N``: that status with a short JSON body; ``/hang``: no answer until it stops.

With a TLS context (`certificate_authority`) it speaks HTTPS and records the server names
(SNI) its clients asked for.

(It holds no tests; it lives here, beside its users, until a shared home for stand-ins
fits it better.)
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    stopping: threading.Event

    def get_request(self) -> tuple[socket.socket, Any]:
        accepted = super().get_request()
        self.connections += 1
        return accepted


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — the base's name
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if parts[0] == "echo":
            echoed = {
                "method": self.command,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "body": body.decode(errors="replace"),
            }
            self._send(200, json.dumps(echoed).encode(), {"Content-Type": "application/json"})
        elif parts[0] == "bytes":
            self._send(200, b"x" * int(parts[1]), {"Content-Type": "application/octet-stream"})
        elif parts[0] == "binary":
            self._send(200, bytes([0xFF, 0x00, 0x80]), {"Content-Type": "image/png"})
        elif parts[0] == "stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            remaining = int(parts[1])
            while remaining > 0:
                chunk = min(remaining, 64 << 10)
                self.wfile.write(b"y" * chunk)
                remaining -= chunk
            self.close_connection = True
        elif parts[0] == "redirect":
            status = int(query.get("status", "302"))
            self._send(status, b"", {"Location": query["to"]})
        elif parts[0] == "loop":
            self._send(302, b"", {"Location": "/loop"})
        elif parts[0] == "status":
            status = int(parts[1])
            self._send(
                status,
                json.dumps({"status": status}).encode(),
                {"Content-Type": "application/json"},
            )
        elif parts[0] == "hang":
            self.server.stopping.wait()
        else:
            self._send(404, b"no such path")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer


class StandIn:
    def __init__(self, server: _Server, scheme: str = "http") -> None:
        self._server = server
        self.scheme = scheme
        #: The TLS server names (SNI) clients asked for, in order.
        self.server_names: list[str | None] = []

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._server.connections

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"


@contextmanager
def stand_in(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[StandIn]:
    """The server; with `tls` (a server context), it speaks HTTPS and records SNI."""
    server = _Server((host, 0), _Handler)
    server.stopping = threading.Event()
    running = StandIn(server, "https" if tls else "http")
    if tls is not None:

        def record(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
            running.server_names.append(name)

        tls.sni_callback = record
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield running
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


def certificate_authority(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(a server context holding a certificate for `name` only, a client context that
    trusts the authority which signed it): HTTPS to a local server under a real name."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in authority")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = f"{folder}/leaf.pem", f"{folder}/leaf.key"
        with open(cert_file, "wb") as out:
            out.write(leaf.public_bytes(serialization.Encoding.PEM))
        with open(key_file, "wb") as out:
            out.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client
