"""Create a signing key pair, or sign an existing artifact directory (`edge-sign ...`, the
console script; `python -m converters.cli_sign ...` in the same environment). Thin: parse, call
converters.packaging.signing, print; docs/signing.md.

    edge-sign keygen signing/key.pem signing/key.pub
    edge-sign sign out/x86-avx2 --key signing/key.pem
    edge-sign hint signing/key.pub
"""

from __future__ import annotations

from pathlib import Path

import click

from converters import ConversionError
from converters.packaging import signing

_FLAGS = {"sign_key": "--key", "private_path": "PRIVATE", "public_path": "PUBLIC"}


def _flags(message: str) -> str:
    """Library words for CLI words: "same file as private_path" -> "same file as PRIVATE"."""
    for name, flag in _FLAGS.items():
        message = message.replace(name, flag)
    message = message.replace("overwrite=True", "--force")
    return message.replace("include_extra=True", "--include-extra")


def _fail(exc: ConversionError):
    if isinstance(exc, signing.SigningKeyError):
        raise click.BadParameter(_flags(exc.detail), param_hint=_FLAGS.get(exc.parameter, exc.parameter))
    raise click.ClickException(_flags(str(exc)))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Sign edge-convert artifact directories (OpenSSF model-signing format, offline)."""


@main.command()
@click.argument("private", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("public", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="replace existing key files")
def keygen(private, public, force):
    """Create a P-256 key pair: PRIVATE (PEM, mode 0600: keep it on the signing machine) and
    PUBLIC (PEM: copy it to devices, give it to edge-run --trusted-key)."""
    try:
        private, public = signing.generate_key_pair(private, public, overwrite=force)
    except signing.SigningKeyError as exc:
        if exc.parameter in ("private_path", "public_path") and exc.path.exists() and not force:
            raise click.BadParameter(
                f"{exc.path} already exists (--force replaces it)", param_hint=_FLAGS[exc.parameter]
            ) from None
        _fail(exc)
    except ConversionError as exc:  # a place it cannot write
        _fail(exc)
    click.echo(f"private key {private} (keep secret)\npublic key  {public} (give to devices)\n"
               f"key hint    {_hint_of(public)}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="EC private key (PEM) to sign with; never inside DIRECTORY",
)
@click.option(
    "--include-extra",
    is_flag=True,
    help="also sign files manifest.json does not list (refused by default, and named); a private "
    "key is refused even so",
)
def sign(directory, key_path, include_extra):
    """Sign DIRECTORY (an edge-convert output): write DIRECTORY/model.sig over every file in it.
    Artifacts left out whole (a device copy trimmed to what it runs) are fine and named."""
    if not (directory / "manifest.json").is_file():
        # A multi-target run's parent, or some other directory: devices load DIR/<id>, whose
        # own model.sig they check, so signing the parent would leave every artifact unsigned.
        inside = sorted(str(d) for d in directory.iterdir() if (d / "manifest.json").is_file())
        raise click.BadParameter(
            f"{directory} has no manifest.json: "
            + (f"it holds the outputs of several targets; sign each: {', '.join(inside)}" if inside
               else "not an edge-convert artifact directory"),
            param_hint="DIRECTORY",
        )
    try:
        key = signing.load_signing_key(key_path, tool="edge-sign")
        found = signing.check_before_signing(directory, key_path, include_extra=include_extra)
        path = signing.sign_directory(directory, key)
    except ConversionError as exc:
        _fail(exc)
    click.echo(f"signed {directory}: {path} (key hint {signing.key_hint_of(key)})")
    if found.absent:
        click.echo(f"artifacts not in {directory}, left out of the signature (loads skip them): "
                   f"{', '.join(found.absent)}")
    if found.extra:
        click.echo("also signed (--include-extra), not listed in manifest.json: "
                   + ", ".join(found.extra))


def _hint_of(path: Path) -> str:
    try:
        return signing.key_file_hint(path)
    except ConversionError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY") from None


@main.command()
@click.argument("key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def hint(key):
    """Print KEY's hint: the sha256 of its public key's PEM, which model.sig records to name its
    signer and which a device's "no trusted key verifies this signature" error quotes. KEY is a
    public key (PEM) or a private one (its public half's hint)."""
    click.echo(_hint_of(key))


if __name__ == "__main__":
    main()
