"""`helm test` for a fedward release: is it healthy, and does the broker refuse strangers?

Runs inside the coordinator image (standard library only) with:
  CHECK_API_URL      http://<coordinator service>:<port>
  CHECK_BROKER_HOST  the broker's host name (verified against its certificate)
  CHECK_BROKER_PORT  its TLS port
  CHECK_CA_FILE      the CA that signed the broker's certificate

Checks, each one an attack or a probe from outside the coordinator:
  1. /healthz and /readyz answer 200 (the process lives; the database is
     reachable and migrated to head);
  2. the broker's port answers TLS with a certificate the study CA signed;
  3. an anonymous client (TLS, but no client certificate, no username) is
     refused: the handshake fails or the CONNACK carries a refusal code;
  4. a plaintext MQTT client on the same port gets no CONNACK.
Exit 0 only if all hold; each failure is printed on its own line.
tests/helm runs this file against a real Mosquitto started with the chart's
broker configuration.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 10.0


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials."""
    cid = client_id.encode()
    variable = (
        b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol name, level 4, clean session, keepalive 60
    )
    payload = len(cid).to_bytes(2, "big") + cid
    body = variable + payload
    return b"\x10" + bytes([len(body)]) + body


def _read_connack(sock: socket.socket) -> int | None:
    """The CONNACK return code, or None if the broker closed without one."""
    data = b""
    try:
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                return None
            data += chunk
    except (ConnectionError, ssl.SSLError, TimeoutError):
        return None
    if data[0] != 0x20:
        return None
    return data[3]


def check_http(url: str) -> list[str]:
    failures = []
    for path in ("/healthz", "/readyz"):
        try:
            with urllib.request.urlopen(url + path, timeout=TIMEOUT_S) as response:  # noqa: S310
                if response.status != 200:
                    failures.append(f"{path}: HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            failures.append(f"{path}: HTTP {exc.code}")
        except OSError as exc:
            failures.append(f"{path}: unreachable ({exc})")
    return failures


def check_broker_refuses_anonymous(host: str, port: int, ca_file: str) -> list[str]:
    try:
        raw = socket.create_connection((host, port), timeout=TIMEOUT_S)
    except OSError as exc:
        return [f"broker {host}:{port} unreachable ({exc}): cannot check it refuses anonymous"]
    context = ssl.create_default_context(cafile=ca_file)
    try:
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return [f"broker certificate not signed by the study CA: {exc}"]
        except (ssl.SSLError, ConnectionError):
            return []  # refused during the handshake: no client certificate
        try:
            tls.sendall(_connect_packet("fedward-helm-test-anonymous"))
        except (ssl.SSLError, ConnectionError):
            return []  # TLS 1.3: the missing certificate is refused after the handshake
        code = _read_connack(tls)
        if code == 0:
            return ["broker ACCEPTED an anonymous client without a certificate"]
        return []
    finally:
        raw.close()


def check_broker_refuses_plaintext(host: str, port: int) -> list[str]:
    try:
        sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
    except OSError as exc:
        return [f"broker {host}:{port} unreachable ({exc})"]
    try:
        try:
            sock.sendall(_connect_packet("fedward-helm-test-plaintext"))
        except ConnectionError:
            return []
        if _read_connack(sock) is not None:
            return ["broker answered a plaintext MQTT CONNECT on its TLS port"]
        return []
    finally:
        sock.close()


def main() -> int:
    host = os.environ["CHECK_BROKER_HOST"]
    port = int(os.environ["CHECK_BROKER_PORT"])
    failures = check_http(os.environ["CHECK_API_URL"].rstrip("/"))
    failures += check_broker_refuses_anonymous(host, port, os.environ["CHECK_CA_FILE"])
    failures += check_broker_refuses_plaintext(host, port)
    for failure in failures:
        print(f"FAIL {failure}")
    if not failures:
        print("ok: coordinator healthy and ready; broker refuses anonymous and plaintext clients")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
