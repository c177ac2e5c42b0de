"""Content credentials: `render --sign` / `[film] sign = true` write out/film.signed.mp4, which
c2pa's own reader validates against a throwaway CA; out/film.mp4 stays byte-identical."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runner import cli
from runner.errors import UserError
from runner.run import credentials
from tests.films import gen

pytestmark = pytest.mark.xdist_group("credentials")

FILM = """\
[film]
title = "Signed"
size = "160x90"
fps = 24
sign = true

[defaults]
seconds = 1

[characters.mara]
description = "a girl"

[shots.a]
prompt = "a lantern"

[shots.b]
prompt = "a river"
dialogue = [{ who = "mara", line = "Look." }]  # subtitles: the cut is under the sound layers
"""


@dataclass
class Chain:
    root: str  # the trust anchor, PEM
    chain: bytes  # signing certificate, then the intermediate
    key: bytes  # the signing certificate's private key (PKCS#8 PEM)


def _cert(
    key: ec.EllipticCurvePrivateKey,
    name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, str],
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "runner tests"),
        ]
    )
    issuer_name = (
        subject
        if issuer[1] == name
        else x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, issuer[1]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "runner tests"),
            ]
        )
    )
    usage = dict.fromkeys(
        [
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()),
            critical=False,
        )
    )
    if not ca:  # C2PA's certificate profile: an EKU from its list (email protection here)
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
        builder = builder.add_extension(eku, critical=False)
    return builder.sign(issuer[0], hashes.SHA256())


def make_chain() -> Chain:
    """A root CA, an intermediate and an ES256 signing certificate, made for this test."""
    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(root_key, "runner test root", (root_key, "runner test root"), ca=True)
    mid = _cert(mid_key, "runner test intermediate", (root_key, "runner test root"), ca=True)
    leaf = _cert(leaf_key, "runner test signer", (mid_key, "runner test intermediate"), ca=False)
    pem = serialization.Encoding.PEM
    key = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Chain(
        root.public_bytes(pem).decode(), leaf.public_bytes(pem) + mid.public_bytes(pem), key
    )


def render(*args: str | Path, env: dict[str, str]) -> tuple[int, str, str]:
    """`runner render` in this process, with these variables set (and the signing ones unset)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for name in (credentials.KEY_ENV, credentials.CERT_ENV):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["render", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


@dataclass
class Signed:
    root: Path
    chain: Chain
    film: Path  # out/film.mp4
    signed: Path  # out/film.signed.mp4
    unsigned_bytes: bytes  # out/film.mp4 of the render that had no key
    outputs: list[str]  # what each render printed and logged


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    """One tiny film rendered with `sign = true`: first with no key, then with one."""
    root = tmp_path_factory.mktemp("signed")
    chain = make_chain()
    gen(
        root,
        {
            ".git/HEAD": "",  # the repository's root, where pyproject.toml is read
            "films/s/film.toml": FILM,
            "keys/chain.pem": chain.chain.decode(),
        },
    )
    manifest, cache = root / "films/s/film.toml", root / ".cache"
    env = {"RUNNER_CACHE_DIR": str(cache)}
    outputs = []
    code, out, err = render(manifest, env=env)
    assert code == 0, err
    outputs.append(out + err)
    assert err.count("warning") == 1, err  # said once, for the film, not per node
    assert "sign = true, but no signing key is configured" in err
    assert not (root / "films/s/out/film.signed.mp4").exists()
    film = root / "films/s/out/film.mp4"
    unsigned = film.read_bytes()
    # The key as PEM text (a CI secret), the certificate as a path (a file beside the repo).
    keyed = {
        **env,
        credentials.KEY_ENV: chain.key.decode(),
        credentials.CERT_ENV: str(root / "keys/chain.pem"),
    }
    code, out, err = render(manifest, "--sign", env=keyed)
    assert code == 0, err
    outputs.append(out + err)
    return Signed(root, chain, film, root / "films/s/out/film.signed.mp4", unsigned, outputs)


def manifest_of(store: dict[str, Any]) -> dict[str, Any]:
    active: dict[str, Any] = store["manifests"][store["active_manifest"]]
    return active


def test_the_signed_film_validates_and_carries_the_assertions_and_clips(signed: Signed) -> None:
    assert signed.film.read_bytes() == signed.unsigned_bytes  # signing never touches film.mp4
    assert str(signed.signed) in signed.outputs[1]
    store = credentials.read(signed.signed, anchors=signed.chain.root)
    assert store["validation_state"] == "Trusted", store.get("validation_results")
    active = manifest_of(store)
    assert active["claim_generator_info"][0]["name"] == "runner"
    assertions = {a["label"]: a["data"] for a in active["assertions"]}
    actions = assertions["c2pa.actions.v2"]["actions"]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    prov = signed.film.with_name("film.provenance.json")
    record = assertions[credentials.PROVENANCE_LABEL]
    assert record["sha256"] == hashlib.sha256(prov.read_bytes()).hexdigest()
    assert record["edit_sha256"] == json.loads(prov.read_text())["film"]["edit_sha256"]
    assert [i["title"] for i in active["ingredients"]] == ["shots.a", "shots.b"]
    assert all(i["relationship"] == "componentOf" for i in active["ingredients"])
    # Without the test's root as an anchor the signature still checks, but is not trusted.
    assert credentials.read(signed.signed)["validation_state"] == "Valid"


def test_no_key_material_in_any_record_log_or_output(signed: Signed) -> None:
    secret = b"".join(signed.chain.key.splitlines()[1:-1])[:40]  # a run of the key's body
    assert secret
    for path in [*signed.root.joinpath(".cache").rglob("*"), *signed.film.parent.rglob("*")]:
        if path.is_file() and path.suffix != ".mp4":
            assert secret not in path.read_bytes().replace(b"\n", b""), path
    assert all(secret.decode() not in text.replace("\n", "") for text in signed.outputs)


def test_a_tampered_byte_fails_validation(signed: Signed, tmp_path: Path) -> None:
    data = bytearray(signed.signed.read_bytes())
    data[data.rindex(b"mdat") + 64] ^= 0x01  # one bit of the video
    tampered = tmp_path / "tampered.mp4"
    tampered.write_bytes(bytes(data))
    store = credentials.read(tampered, anchors=signed.chain.root)
    assert store["validation_state"] == "Invalid"
    failures = store["validation_results"]["activeManifest"]["failure"]
    assert "assertion.bmffHash.mismatch" in {f["code"] for f in failures}


def test_a_second_render_keeps_the_signed_film_and_a_clips_own_credentials_are_kept(
    signed: Signed, tmp_path: Path
) -> None:
    before = signed.signed.read_bytes()
    env = {
        "RUNNER_CACHE_DIR": str(signed.root / ".cache"),
        credentials.KEY_ENV: str(tmp_path / "key.pem"),  # this time the key as a path
        credentials.CERT_ENV: signed.chain.chain.decode(),
    }
    (tmp_path / "key.pem").write_bytes(signed.chain.key)
    code, _, err = render(signed.root / "films/s/film.toml", env=env)
    assert code == 0, err
    assert signed.signed.read_bytes() == before  # same film, same certificate: not signed again
    # A clip that came with credentials of its own (as some providers embed) keeps them.
    key = credentials.configured({}, env, tmp_path)
    assert key is not None
    clip = credentials.Clip("shots.p", signed.signed, "0" * 64, "provider", "model-x")
    claim = {"sha256": "1" * 64}
    out = tmp_path / "film.signed.mp4"
    definition = credentials.manifest("Signed", claim, [clip])
    credentials.sign(signed.film, out, key, definition, [clip])
    store = credentials.read(out, anchors=signed.chain.root)
    assert store["validation_state"] == "Trusted"
    ingredient = manifest_of(store)["ingredients"][0]
    assert ingredient["description"] == "provider / model-x"
    assert ingredient["active_manifest"] in store["manifests"]  # the clip's own manifest
    assert len(store["manifests"]) == 2


def test_sign_flag_without_a_key_stops_before_rendering(tmp_path: Path) -> None:
    gen(tmp_path, {".git/HEAD": "", "film.toml": FILM.replace("sign = true\n", "")})
    env = {"RUNNER_CACHE_DIR": str(tmp_path / ".cache"), credentials.KEY_ENV: ""}
    code, _, err = render(tmp_path / "film.toml", "--sign", env=env)
    assert code == 2
    assert "--sign: no signing key is configured" in err and "RUNNER_SIGN_KEY" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    code, _, err = render(tmp_path / "film.toml", "--sign", "--shard", "1/2", env=env)
    assert code == 2 and "shard" in err


def test_a_key_that_does_not_fit_is_an_error_that_never_shows_the_key(tmp_path: Path) -> None:
    one, other = make_chain(), make_chain()
    body = one.key.decode().splitlines()[1]
    cert = {credentials.CERT_ENV: one.chain.decode()}
    cases: list[tuple[dict[str, str], dict[str, Any], str]] = [
        ({credentials.KEY_ENV: one.key.decode()}, {}, "no certificate chain"),
        (
            {credentials.KEY_ENV: one.key.decode(), credentials.CERT_ENV: other.chain.decode()},
            {},
            "is not the signing key's",
        ),
        (
            {credentials.KEY_ENV: "-----BEGIN PRIVATE KEY-----\n" + body, **cert},
            {},
            "not a PEM private",
        ),
        (
            {credentials.KEY_ENV: body, **cert},
            {},
            "cannot read the signing key",
        ),  # not a path either
        ({}, {"sign_key": "missing.pem", "sign_cert": "c.pem"}, "sign_key = 'missing.pem'"),
    ]
    for env, tool, expected in cases:
        with pytest.raises(UserError) as err:
            credentials.configured(tool, env, tmp_path)
        assert expected in str(err.value)
        assert body not in str(err.value) and "BEGIN" not in str(err.value)
    # From pyproject.toml: paths from the repository's root.
    gen(tmp_path, {"k.pem": one.key.decode(), "c.pem": one.chain.decode()})
    key = credentials.configured({"sign_key": "k.pem", "sign_cert": "c.pem"}, {}, tmp_path)
    assert key is not None and key.alg == "es256"
    assert body not in repr(key)
    assert credentials.configured({}, {credentials.KEY_ENV: ""}, tmp_path) is None


def test_a_film_signed_before_is_withdrawn_when_a_new_cut_cannot_be_signed(
    signed: Signed, tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(signed.root, root)
    manifest = root / "films/s/film.toml"
    manifest.write_text(FILM.replace('"a river"', '"a wide river"'))
    code, _, err = render(manifest, env={"RUNNER_CACHE_DIR": str(root / ".cache")})
    assert code == 0, err
    assert not (root / "films/s/out/film.signed.mp4").exists()  # of the old cut: removed
