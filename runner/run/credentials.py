"""Content credentials: the published film signed with C2PA, through c2pa-python.

A C2PA manifest is not deterministic (each has a fresh id, an ECDSA signature a fresh nonce),
so out/<stem>.mp4 stays the byte-identical film and the signed copy is a second file,
out/<stem>.signed.mp4, made once per film and certificate and kept until either changes.
The key is read from the environment or the repository's pyproject.toml, never the manifest,
and is never written to a record, a log or a message: only its certificate's fingerprint is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import __version__
from runner.cache.store import read_json, write_json
from runner.digest import file_digest
from runner.errors import UserError

SIGNED_VERSION = 1  # the state file that remembers what out/<stem>.signed.mp4 was made from
AI_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PROVENANCE_LABEL = "runner.provenance"  # our assertion: the provenance record's digest
KEY_ENV, CERT_ENV = "RUNNER_SIGN_KEY", "RUNNER_SIGN_CERT"
HOW = (
    f"set {KEY_ENV} and {CERT_ENV} (PEM text, or the path of a PEM file) or "
    "[tool.runner] sign_key and sign_cert (paths from the repository's root) in pyproject.toml"
)
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|\Z)", re.S)


@dataclass(frozen=True)
class SigningKey:
    """A private key and its certificate chain (leaf first). repr shows neither."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    alg: str  # c2pa's name: es256, es384, es512, ps256, ed25519
    fingerprint: str  # sha256 of the leaf certificate: what a cache key may hold


@dataclass(frozen=True)
class Clip:
    """One clip of the cut: an ingredient of the signed film."""

    node: str
    path: Path
    sha256: str
    backend: str | None = None
    model: str | None = None


def configured(tool: Mapping[str, Any], env: Mapping[str, str], root: Path) -> SigningKey | None:
    """The signing key, from RUNNER_SIGN_KEY/RUNNER_SIGN_CERT, else [tool.runner]
    sign_key/sign_cert; None when no key is given (a teammate, a pull request's job).
    A key given with no certificate, or one that cannot be read, is an error."""
    key = _read("key", KEY_ENV, "sign_key", tool, env, root)
    if key is None:
        return None
    cert = _read("certificate", CERT_ENV, "sign_cert", tool, env, root)
    if cert is None:
        raise UserError(f"a signing key is given but no certificate chain: {HOW}")
    return _check(key[0], cert[0], key[1], cert[1])


def _read(
    what: str, var: str, setting: str, tool: Mapping[str, Any], env: Mapping[str, str], root: Path
) -> tuple[bytes, str] | None:
    """(PEM bytes, where they came from), or None when neither place names them. The value
    of a variable is never shown: it may be the key itself."""
    value = env.get(var, "")
    if value.strip():
        if value.lstrip().startswith("-----BEGIN"):
            return value.encode(), var
        path, where = Path(value), f"{var} (a path)"
    else:
        given = tool.get(setting)
        if given is None:
            return None
        if not isinstance(given, str) or not given:
            raise UserError(f"pyproject.toml: [tool.runner] {setting}: the path of a PEM file")
        path = root / given
        where = f"pyproject.toml [tool.runner] {setting} = {given!r}"
    try:
        return path.read_bytes(), where
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise UserError(f"{where}: cannot read the signing {what} ({why}); {HOW}") from None


def _check(key: bytes, cert: bytes, key_where: str, cert_where: str) -> SigningKey:
    """Parse both, check that they belong together and choose the algorithm."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise UserError(
            f"{key_where}: the signing key is encrypted; give it unencrypted (keep it in a "
            "secret store, not in the repository)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise UserError(f"{key_where}: not a PEM private key (PKCS#8 or traditional)") from None
    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError:
        raise UserError(f"{cert_where}: not a PEM certificate chain (leaf first)") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(der, spki) != private.public_key().public_bytes(
        der, spki
    ):
        raise UserError(
            f"{cert_where}: the first certificate is not the signing key's ({key_where}); "
            "give the chain leaf first"
        )
    alg: str | None = None
    if isinstance(private, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(
            private.curve.name
        )
    elif isinstance(private, rsa.RSAPrivateKey):
        alg = "ps256"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg = "ed25519"
    if alg is None:
        raise UserError(
            f"{key_where}: C2PA signs with EC P-256/P-384/P-521, RSA (PSS) or Ed25519 keys"
        )
    fingerprint = chain[0].fingerprint(hashes.SHA256()).hex()
    return SigningKey(key, cert, alg, fingerprint)


def manifest(title: str, provenance: Mapping[str, str], clips: list[Clip]) -> dict[str, Any]:
    """The C2PA manifest definition: an AI-generated creation by this runner, the digest of
    its provenance record, and each clip of the cut as an ingredient."""
    agent = {"name": "runner", "version": __version__}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": "video/mp4",
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": AI_SOURCE,
                            "softwareAgent": agent,
                        },
                        {
                            "action": "c2pa.placed",
                            "softwareAgent": agent,
                            "parameters": {"ingredientIds": [c.node for c in clips]},
                        },
                    ]
                },
            },
            {"label": PROVENANCE_LABEL, "data": {"version": 1, **provenance}},
        ],
    }


def sign(
    film: Path, dest: Path, key: SigningKey, definition: dict[str, Any], clips: list[Clip]
) -> None:
    """Write film, signed, to dest. A clip's own credentials (a provider's) are kept in its
    ingredient."""
    import c2pa

    # No thumbnail: a video's would be a frame grab c2pa cannot make anyway.
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    info = c2pa.C2paSignerInfo(key.alg.encode(), key.cert_pem, key.key_pem, None)
    try:
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(definition, context) as builder:
            for clip in clips:
                ingredient = {
                    "title": clip.node,
                    "label": clip.node,
                    "relationship": "componentOf",
                    "format": "video/mp4",
                    "description": " / ".join(
                        dict.fromkeys(filter(None, [clip.backend, clip.model]))
                    )
                    or None,
                }
                with clip.path.open("rb") as stream:
                    builder.add_ingredient(
                        {k: v for k, v in ingredient.items() if v is not None}, "video/mp4", stream
                    )
            with film.open("rb") as src, dest.open("w+b") as out:
                builder.sign(signer, "video/mp4", src, out)
    except c2pa.C2paError as err:
        raise UserError(f"signing {film.name} failed: {_redacted(str(err), key)}") from None
    finally:
        context.close()


def _redacted(text: str, key: SigningKey) -> str:
    """c2pa's message, with no PEM block or key line in it, whatever c2pa put there."""
    text = _PEM.sub("[PEM]", text)
    for line in key.key_pem.decode(errors="replace").splitlines():
        if len(line) > 16:
            text = text.replace(line, "[key]")
    return text[:500]


def publish(
    state: Path,
    film: Path,
    signed: Path,
    key: SigningKey,
    title: str,
    provenance: Mapping[str, str],
    clips: list[Clip],
) -> Path:
    """out/<stem>.signed.mp4 for this film and certificate, signed again only when either
    changed or the file was edited; `state` remembers what it was made from."""
    source = {
        "v": SIGNED_VERSION,
        "runner": __version__,
        "film": file_digest(film),
        "cert": key.fingerprint,
        **provenance,
    }
    made = read_json(state)
    if (
        isinstance(made, dict)
        and made.get("source") == source
        and signed.is_file()
        and file_digest(signed) == made.get("output")
    ):
        return signed
    fd, tmp = tempfile.mkstemp(dir=signed.parent, prefix=f".{signed.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sign(film, Path(tmp), key, manifest(title, provenance, clips), clips)
        os.chmod(tmp, 0o644)
        os.replace(tmp, signed)
    finally:
        Path(tmp).unlink(missing_ok=True)
    write_json(state, {"version": SIGNED_VERSION, "source": source, "output": file_digest(signed)})
    return signed


def withdraw(state: Path, film: Path, signed: Path) -> bool:
    """Remove out/<stem>.signed.mp4 when it is of another cut than out/<stem>.mp4 (this
    render could not sign): a stale signed film beside a new one would mislead."""
    made = read_json(state)
    if not signed.exists() or not isinstance(made, dict):
        return False
    source = made.get("source")
    if isinstance(source, dict) and source.get("film") == file_digest(film):
        return False
    signed.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    return True


def provenance_claim(prov: Path, edit_sha256: str) -> dict[str, str]:
    """What the signed film says of its provenance record: its name and digest."""
    return {
        "record": prov.name,
        "sha256": hashlib.sha256(prov.read_bytes()).hexdigest(),
        "edit_sha256": edit_sha256,
    }


def read(path: Path, anchors: str | None = None) -> dict[str, Any]:
    """The manifest store of a signed file as c2pa's reader reports it (with its
    validation_state), trusting `anchors` (PEM roots) besides c2pa's own."""
    import c2pa

    settings: dict[str, Any] = {"trust": {"user_anchors": anchors}} if anchors else {}
    with c2pa.Context.from_dict(settings) as context, c2pa.Reader(path, context=context) as reader:
        store: dict[str, Any] = json.loads(reader.json())
        return store
