"""Creates a private test CA and a server certificate for the HTTPS doubles.

    python testca.py --out DIR [--name NAME]

Writes DIR/ca.pem (the CA certificate, the only file a client needs),
DIR/NAME.pem (the server certificate followed by the CA) and DIR/NAME-key.pem.
The server certificate is valid for 127.0.0.1, ::1, localhost and
pka.localhost, for one day. Each run makes new keys, so no two test runs share
a CA.
"""

import argparse
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ["localhost", "pka.localhost"]
SERVER_ADDRESSES = ["127.0.0.1", "::1"]


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create(out, name="server", ca_name="portainer-key-agent test CA"):
    """Writes the CA and one server certificate into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)
    end = now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alternative_names = [x509.DNSName(host) for host in SERVER_NAMES]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in SERVER_ADDRESSES]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    paths = {
        "ca": out / "ca.pem",
        "cert": out / f"{name}.pem",
        "key": out / f"{name}-key.pem",
    }
    paths["ca"].write_bytes(ca_pem)
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    paths["key"].write_bytes(_pem_key(server_key))
    paths["key"].chmod(0o600)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", required=True, help="directory to write the PEM files to")
    parser.add_argument("--name", default="server", help="file name stem of the server certificate")
    parser.add_argument("--ca-name", default="portainer-key-agent test CA", help="common name of the CA")
    args = parser.parse_args(argv)
    paths = create(args.out, args.name, args.ca_name)
    print(f"wrote {paths['ca']} {paths['cert']} {paths['key']}")


if __name__ == "__main__":
    main()
