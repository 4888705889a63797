"""edgeml-keygen: make an Ed25519 key pair for signing artifacts (compiled/signing.py).

  edgeml-keygen signing.pem [--public signing.pub]

The private key (PEM, PKCS#8, mode 0600) signs: `edgeml-compile model.onnx --sign signing.pem`. The public key (PEM)
is what the device trusts: `compiled.load(path, trusted_keys=["signing.pub"], require_signature=True)` or
EDGEML_TRUSTED_KEYS=signing.pub. OpenSSL makes the same files: `openssl genpkey -algorithm ed25519 -out signing.pem`
and `openssl pkey -in signing.pem -pubout -out signing.pub`.
"""
import argparse
import os


def main(argv=None):
  ap = argparse.ArgumentParser(prog="edgeml-keygen", description="Make an Ed25519 key pair for signing artifacts.")
  ap.add_argument("private", help="where to write the private key (PEM); it must not exist")
  ap.add_argument("--public", help="where to write the public key (default: the private key's name with .pub)")
  args = ap.parse_args(argv)
  public = args.public or os.path.splitext(args.private)[0] + ".pub"
  for path in (args.private, public):
    if os.path.exists(path): raise SystemExit(f"edgeml-keygen: {path} exists; not overwriting a key")
  from compiled.signing import generate_keypair
  try: raw = generate_keypair(args.private, public)
  except OSError as e: raise SystemExit(f"edgeml-keygen: cannot write the key: {e.strerror}: {e.filename}")
  print(f"edgeml-keygen: private key {args.private} (keep it secret), public key {public} ({raw.hex()})")


if __name__ == "__main__":
  main()
