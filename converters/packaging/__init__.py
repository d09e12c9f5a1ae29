"""Stage 4, packaging: what turns work files into the artifact directory a device trusts.

    package.py   staging directory, locks, external data, file entries, the manifest write
    golden.py    golden samples per artifact and their tolerances
    signing.py   OpenSSF model-signing (model.sig) with an EC P-256 key
"""
