"""Pinned checksums of the corpora that ``python -m awdlm.data download`` fetches.

The download sources and split file names live in ``awdlm/conf/dataset/*.yaml``
(``dataset.sources``), so a user can put a mirror first. The checksums stay
here, in code, so that no configuration change can make a wrong file pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PinnedDataset:
    """The files of one downloadable corpus and what each must hash to.

    ``sha256`` maps a file name to its hex digest, or to None where no
    trusted digest is known. ``witnesses`` are other files of the same
    archive with known digests: when an archive source contains them, they
    must match too, which vouches for the archive as a whole.
    """

    sha256: dict[str, str | None]
    witnesses: dict[str, str] = field(default_factory=dict)


# SHA-256 of the published files. They were computed from copies whose MD5s
# match those torchtext publishes for PennTreebank (train f26c4b92...,
# valid aa0affc0..., test 8b80168b...) and whose SHA-1s match those GluonNLP
# publishes for WikiText2 (train 863f29c4..., valid 0418625c..., test c7b8ce0a...).
PTB_SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
WIKITEXT2_SHA256 = {
    "wiki.train.tokens": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
# NOTE: no trusted published digest of ptb.char.* is known. They are checked to be non-empty UTF-8, and the PTB word files of their archive must match.
PTB_CHAR_SHA256: dict[str, str | None] = {
    "ptb.char.train.txt": None,
    "ptb.char.valid.txt": None,
    "ptb.char.test.txt": None,
}

PINNED: dict[str, PinnedDataset] = {
    "ptb": PinnedDataset(PTB_SHA256),
    "wikitext2": PinnedDataset(WIKITEXT2_SHA256),
    "ptb_char": PinnedDataset(PTB_CHAR_SHA256, witnesses=PTB_SHA256),
}
