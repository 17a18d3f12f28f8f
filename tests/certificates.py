"""A CA, a server certificate and a client certificate made at test time with the ``openssl``
command (the ``cryptography`` package is not among the project's dependencies), for the
TLS tests: tests/integration/test_tls.py and tests/unit/test_tls_settings.py.

Short-lived (2 days) P-256 keys, unencrypted, readable by their owner only (libpq refuses
a client key that others may read). The server certificate names 127.0.0.1 and localhost.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def issue(folder: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    """A P-256 key and a certificate for it signed by the folder's ``ca.pem``."""
    (folder / f"{name}.ext").write_text(extensions)
    openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject),
        cwd=folder,
    )
    openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext"),
        cwd=folder,
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_certificates(folder: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"),
        *("-subj", "/CN=Conveyor test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=folder,
    )
    server_cert, server_key = issue(
        folder,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    client_cert, client_key = issue(
        folder,
        "client",
        "/CN=conveyor",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n",
    )
    for key in (server_key, client_key):
        key.chmod(0o600)  # libpq refuses a client key others may read
    return Certificates(folder / "ca.pem", server_cert, server_key, client_cert, client_key)
