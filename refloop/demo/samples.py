"""Where the public sample messages are (`../shared/samples` beside the repository, or
REFLOOP_SAMPLES), and reading them. The samples are never modified."""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "REFLOOP_SAMPLES"
REPO = Path(__file__).resolve().parents[2]
# Folders `refloop demo` reads from; their presence says "this is the samples directory".
REQUIRED = ("hl7v2", "fhir-r4", "dicom")


class SamplesMissing(Exception):
    """The sample messages are not where we looked; the message says where and what to do."""


def candidates(explicit: str | Path | None = None) -> list[Path]:
    """Places to look, in order: the explicit path, $REFLOOP_SAMPLES, ../shared/samples next
    to the repository, ../shared/samples from the working directory."""
    found = [Path(explicit)] if explicit else []
    if os.environ.get(ENV):
        found.append(Path(os.environ[ENV]))
    found += [REPO.parent / "shared" / "samples", Path.cwd().parent / "shared" / "samples"]
    return [p.expanduser().resolve() for p in found]


def is_samples_dir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in REQUIRED)


def find_samples(explicit: str | Path | None = None) -> Path:
    looked = candidates(explicit)
    if explicit:  # an explicit choice is not second-guessed
        looked = looked[:1]
    for path in looked:
        if is_samples_dir(path):
            return path
    where = "\n  ".join(str(p) for p in dict.fromkeys(looked))
    raise SamplesMissing(
        f"the public sample messages were not found; looked in:\n  {where}\n"
        f"Put them at ../shared/samples next to the repository, or point {ENV} (or --samples) at the folder "
        f"that holds {', '.join(REQUIRED)}."
    )


class Samples:
    """Reads sample files by their path under the samples directory."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise SamplesMissing(f"sample {name} is missing from {self.root}")
        return path

    def hl7(self, name: str) -> bytes:
        """An HL7 v2 message, byte for byte (`hl7v2/<source>/<file>`)."""
        return self.path(f"hl7v2/{name}").read_bytes()

    def fhir(self, name: str) -> dict:
        return json.loads(self.path(f"fhir-r4/{name}").read_text())

    def dump(self, name: str) -> str:
        """A DCMTK dump file (`dicom/<source>/<file>`), as text."""
        return self.path(f"dicom/{name}").read_text(encoding="latin-1")
