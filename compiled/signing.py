"""Ed25519 signatures of artifacts (the `cryptography` package, imported only when a signature is made or checked).

A signed artifact is an unsigned one (compiled/artifact.py) followed by a 104-byte trailer:

    ... weights blob | sha256 of every byte before it (32) | b"EDGESIG1" (8) | signer's public key (32) | signature (64)

The signature is Ed25519 over SIGNED_CONTEXT + the 32-byte sha256, and that sha256 is recomputed by the reader over
every byte of the file before it (magic, version, lengths, header, padding, weights): the signature covers every byte
the checksum covers, and nothing an attacker may change is outside it (changing the trailer's key or signature only
makes the file fail to verify, or be signed by a key that is not trusted). An artifact without the trailer is
unsigned; it loads unless signatures are required.

Keys are PEM files: the private key PKCS#8, the public key SubjectPublicKeyInfo, as `generate_keypair` (and
`edgeml-keygen`) writes them, or as OpenSSL makes them:

    openssl genpkey -algorithm ed25519 -out signing.pem
    openssl pkey -in signing.pem -pubout -out signing.pub

The loader trusts the public keys given to `compiled.load(..., trusted_keys=[...])` (files, PEM bytes, raw 32-byte
keys) and the files named in EDGEML_TRUSTED_KEYS (a list separated by os.pathsep).
"""
import os

from compiled.artifact import ArtifactError
from compiled.atomic import write_atomic

SIG_MAGIC = b"EDGESIG1"
KEY_BYTES, SIGNATURE_BYTES = 32, 64
TRAILER = len(SIG_MAGIC) + KEY_BYTES + SIGNATURE_BYTES
SIGNED_CONTEXT = b"edgeml artifact sha256 v1\0"
TRUSTED_KEYS_ENV = "EDGEML_TRUSTED_KEYS"


def _ed25519():
  from cryptography.hazmat.primitives.asymmetric import ed25519
  return ed25519


def _serialization():
  from cryptography.hazmat.primitives import serialization
  return serialization


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> bytes:
  """Write a new Ed25519 private key (PEM, mode 0600) and its public key (PEM); returns the raw public key."""
  ser = _serialization()
  key = _ed25519().Ed25519PrivateKey.generate()
  private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
  public = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
  old = os.umask(0o077)
  try: write_atomic(private_path, private)
  finally: os.umask(old)
  write_atomic(public_path, public)
  return raw_public_key(public)


def _read_if_path(key, what: str) -> tuple:
  """(the file's bytes, "<what> file PATH") when `key` is a path, else (key, what) as given."""
  if not isinstance(key, (str, os.PathLike)): return key, what
  what = f"{what} file {os.fspath(key)}"
  try:
    with open(key, "rb") as f: return f.read(), what
  except OSError as e: raise ArtifactError(f"cannot read {what}: {e.strerror}") from None


def load_private_key(key):
  """An Ed25519 private key from a PEM file path, PEM bytes, or a key object; ArtifactError when it is not one."""
  ed = _ed25519()
  if isinstance(key, ed.Ed25519PrivateKey): return key
  key, what = _read_if_path(key, "private key")
  try: loaded = _serialization().load_pem_private_key(bytes(key), password=None)
  except (ValueError, TypeError) as e: raise ArtifactError(f"{what} is not an unencrypted PEM private key: {e}") from None
  if not isinstance(loaded, ed.Ed25519PrivateKey): raise ArtifactError(f"{what} is not an Ed25519 key")
  return loaded


def raw_public_key(key) -> bytes:
  """The 32 raw bytes of an Ed25519 public key given as a file path, PEM bytes, raw bytes or a key object."""
  ed, ser = _ed25519(), _serialization()
  if isinstance(key, ed.Ed25519PrivateKey): key = key.public_key()
  if isinstance(key, ed.Ed25519PublicKey): return key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
  key, what = _read_if_path(key, "trusted key")
  if not isinstance(key, (bytes, bytearray, memoryview)): raise ArtifactError(f"{what}: {type(key).__name__} is not a key")
  key = bytes(key)
  if len(key) == KEY_BYTES: return key
  try: loaded = ser.load_pem_public_key(key)
  except (ValueError, TypeError) as e: raise ArtifactError(f"{what} is neither a PEM public key nor 32 raw bytes: {e}") from None
  if not isinstance(loaded, ed.Ed25519PublicKey): raise ArtifactError(f"{what} is not an Ed25519 public key")
  return loaded.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def trusted_keys_from(keys=None) -> list[bytes]:
  """The raw public keys of `keys` plus those of the files in EDGEML_TRUSTED_KEYS."""
  if isinstance(keys, (str, bytes, bytearray, os.PathLike)): keys = [keys]   # one key given alone
  env = [p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p]
  return [raw_public_key(k) for k in [*(keys or ()), *env]]


def trailer(digest: bytes, private_key) -> bytes:
  """The signature trailer for a file whose sha256 (of every byte before it) is `digest`."""
  key = load_private_key(private_key)
  return SIG_MAGIC + raw_public_key(key) + key.sign(SIGNED_CONTEXT + digest)


def check(where: str, digest: bytes, trailer_bytes: bytes | None, trusted: list[bytes], required: bool) -> str:
  """Raise ArtifactError unless the trailer (None: unsigned) is acceptable; returns the signer's key (hex) or ''."""
  if trailer_bytes is None:
    if required: raise ArtifactError(f"{where}: unsigned, and signatures are required (sign it: edgeml-compile --sign KEY)")
    return ""
  key, signature = trailer_bytes[len(SIG_MAGIC):len(SIG_MAGIC) + KEY_BYTES], trailer_bytes[-SIGNATURE_BYTES:]
  if required and not trusted:
    raise ArtifactError(f"{where}: signatures are required but no key is trusted (give trusted_keys or {TRUSTED_KEYS_ENV})")
  if trusted and key not in trusted:
    raise ArtifactError(f"{where}: signed by key {key.hex()}, which is not among the {len(trusted)} trusted keys")
  from cryptography.exceptions import InvalidSignature
  try: _ed25519().Ed25519PublicKey.from_public_bytes(key).verify(signature, SIGNED_CONTEXT + digest)
  except (InvalidSignature, ValueError):
    raise ArtifactError(f"{where}: bad signature: the signature at the end of the file does not match its contents "
                        f"and key {key.hex()}") from None
  return key.hex()
