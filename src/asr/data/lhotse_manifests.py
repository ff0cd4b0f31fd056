"""Lhotse manifests as a corpus: reading a split from them, and writing a split as them.

A split ``SPLIT`` lives in one manifest directory under Lhotse's own file names (those of its recipes, e.g.
``lhotse prepare librispeech``): ``{prefix}_recordings_{SPLIT}.{suffix}`` with
``{prefix}_supervisions_{SPLIT}.{suffix}``, or else ``{prefix}_cuts_{SPLIT}.{suffix}`` (a ``CutSet``).
Each supervision becomes an :class:`~asr.data.corpus.Utterance` whose id is the supervision's id, whose
audio is its recording's file and whose transcript is its text normalized as the LibriSpeech layout's
(:func:`~asr.data.corpus.normalize_transcript`); features are then computed from that file by the same
:class:`~asr.data.features.FeatureCache` as for the layout, so both readings of one corpus give the same
features. Features stored in cuts are not used.

What is read: one supervision per recording, covering it whole, and recordings of one audio file without
transforms (speed perturbation and the like). Anything else raises :class:`DataError` naming the manifest
and the fix, as does a manifest that is missing, empty, unreadable or of the wrong kind.

``lhotse`` is imported inside the functions only: the LibriSpeech layout and ``scripts/transcribe.py``
never pay for its import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.data.corpus import Utterance, normalize_transcript
from asr.data.errors import DataError
from common.atomic import save_atomic

KINDS = ("recordings", "supervisions", "cuts")
# A supervision "covers" its recording when its ends are this close to the recording's (a 10 ms frame shift).
_COVER_TOLERANCE_S = 0.01
_LIBRISPEECH_ID = re.compile(r"(\d+)-(\d+)-\d+")
_FIX_WRITE = ("Fix: write the split's manifests again (python scripts/lhotse_manifests.py data.root=ROOT for a "
              "LibriSpeech-layout corpus, or Lhotse's recipe), or point data.lhotse.dir/prefix/suffix at them")


def manifest_paths(manifest_dir: str | Path, split: str, prefix: str, suffix: str = "jsonl.gz") -> dict[str, Path]:
    """The manifest files of ``split``: ``{kind: manifest_dir / f"{prefix}_{kind}_{split}.{suffix}"}`` for
    ``kind`` in :data:`KINDS`."""
    return {kind: Path(manifest_dir) / f"{prefix}_{kind}_{split}.{suffix}" for kind in KINDS}


def lhotse_splits(manifest_dir: str | Path, prefix: str, suffix: str = "jsonl.gz") -> list[str]:
    """Names of the splits that ``manifest_dir`` holds a manifest of (under :func:`manifest_paths`' names)."""
    pattern = re.compile(f"{re.escape(prefix)}_(?:{'|'.join(KINDS)})_(.+)\\.{re.escape(suffix)}")
    directory = Path(manifest_dir)
    if not directory.is_dir():
        raise DataError(f"Lhotse manifest directory {directory} does not exist. {_FIX_WRITE}")
    return sorted({m.group(1) for p in directory.iterdir() if (m := pattern.fullmatch(p.name))})


def read_lhotse_split(manifest_dir: str | Path, split: str, prefix: str, suffix: str = "jsonl.gz") -> list[Utterance]:
    """All utterances of ``split``, sorted by id, from its recordings + supervisions manifests (preferred when
    both exist) or its cuts manifest; see the module docstring for what is read and what raises."""
    paths = manifest_paths(manifest_dir, split, prefix, suffix)
    recordings_path, supervisions_path, cuts_path = (paths[kind] for kind in KINDS)
    if recordings_path.is_file() or supervisions_path.is_file():
        for path in (recordings_path, supervisions_path):
            if not path.is_file():
                raise DataError(f"Lhotse manifest {path} not found (its pair "
                                f"{supervisions_path if path == recordings_path else recordings_path} exists). "
                                f"{_FIX_WRITE}")
        pairs = _pairs_from_recordings(recordings_path, supervisions_path)
    elif cuts_path.is_file():
        pairs = _pairs_from_cuts(cuts_path)
    else:
        raise DataError(f"no Lhotse manifests of split '{split}' in {manifest_dir}: neither {recordings_path.name} "
                        f"with {supervisions_path.name} nor {cuts_path.name}. Fix: write them (python "
                        "scripts/lhotse_manifests.py data.root=ROOT, or Lhotse's recipe), or correct data.lhotse.dir/"
                        "prefix/suffix and the split names (data.train_split, data.dev_splits, data.test_splits)")
    utterances: dict[str, Utterance] = {}
    for manifest, recording, supervision in pairs:
        utt = _utterance(manifest, recording, supervision)
        if utt.utt_id in utterances:
            raise DataError(f"{manifest}: supervision id '{utt.utt_id}' appears twice. Fix: keep one per utterance")
        utterances[utt.utt_id] = utt
    return sorted(utterances.values(), key=lambda u: u.utt_id)


def _load(path: Path, set_name: str) -> list:
    """The items of the manifest ``path``, which must hold a ``lhotse.<set_name>``."""
    import lhotse

    expected = getattr(lhotse, set_name)
    try:
        manifest = expected.from_file(path)
        items = [] if manifest is None else list(manifest)
    except Exception as err:  # json, gzip, zlib and Lhotse's own checks raise many kinds
        reason = (str(err).splitlines() or [""])[0]
        raise DataError(f"cannot read Lhotse manifest {path}: {type(err).__name__}: {reason}. {_FIX_WRITE}") from err
    if not items:
        raise DataError(f"Lhotse manifest {path} is empty. {_FIX_WRITE}")
    if not isinstance(manifest, expected):
        raise DataError(f"Lhotse manifest {path} holds a {type(manifest).__name__}, not a {set_name}. {_FIX_WRITE}")
    return items


def _pairs_from_recordings(recordings_path: Path, supervisions_path: Path) -> Iterable[tuple[Path, object, object]]:
    recordings = {r.id: r for r in _load(recordings_path, "RecordingSet")}
    used: set[str] = set()
    pairs = []
    for supervision in _load(supervisions_path, "SupervisionSet"):
        recording = recordings.get(supervision.recording_id)
        if recording is None:
            raise DataError(f"{supervisions_path}: supervision '{supervision.id}' names recording "
                            f"'{supervision.recording_id}', which {recordings_path} does not hold. {_FIX_WRITE}")
        if supervision.recording_id in used:
            raise DataError(f"{supervisions_path}: recording '{supervision.recording_id}' has several supervisions; "
                            "only one per recording, covering it whole, is read. Fix: cut the recording into one "
                            "audio file per segment")
        used.add(supervision.recording_id)
        pairs.append((supervisions_path, recording, supervision))
    orphans = sorted(set(recordings) - used)
    if orphans:
        raise DataError(f"{recordings_path}: recording '{orphans[0]}' ({len(orphans)} in all) has no supervision in "
                        f"{supervisions_path}. Fix: add their supervisions or remove the recordings")
    return pairs


def _pairs_from_cuts(cuts_path: Path) -> Iterable[tuple[Path, object, object]]:
    from lhotse import MonoCut

    pairs = []
    for cut in _load(cuts_path, "CutSet"):
        if not isinstance(cut, MonoCut) or cut.recording is None:
            raise DataError(f"{cuts_path}: cut '{cut.id}' is a {type(cut).__name__} "
                            "without one recording; only MonoCuts of a "
                            "recording are read. Fix: write cuts with CutSet.from_manifests(recordings, supervisions)")
        if len(cut.supervisions) != 1:
            raise DataError(f"{cuts_path}: cut '{cut.id}' has {len(cut.supervisions)} supervisions; one per cut is "
                            "read. Fix: one supervision per cut (e.g. CutSet.trim_to_supervisions, saving the audio)")
        recording = cut.recording
        if abs(cut.start) > _COVER_TOLERANCE_S or abs(cut.end - recording.duration) > _COVER_TOLERANCE_S:
            raise DataError(f"{cuts_path}: cut '{cut.id}' covers {cut.start:.2f}-{cut.end:.2f} s of its "
                            f"{recording.duration:.2f} s recording; only whole recordings are read. "
                            "Fix: save each cut's audio as its own file")
        pairs.append((cuts_path, recording, cut.supervisions[0]))
    return pairs


def _utterance(manifest: Path, recording, supervision) -> Utterance:
    """The utterance of ``supervision`` (a ``SupervisionSegment``) on ``recording`` (a ``Recording``)."""
    where = f"{manifest}: supervision '{supervision.id}'"
    if recording.transforms:
        raise DataError(f"{where}: recording '{recording.id}' has transforms (speed perturbation, ...) that this "
                        "reader does not apply. Fix: use manifests of the unmodified recordings")
    if len(recording.sources) != 1 or recording.sources[0].type != "file":
        kinds = ", ".join(s.type for s in recording.sources)
        raise DataError(f"{where}: recording '{recording.id}' reads its audio from {len(recording.sources)} "
                        f"source(s) of type {kinds}; one audio file is read. Fix: save the audio as one file")
    if abs(supervision.start) > _COVER_TOLERANCE_S or \
            abs(supervision.end - recording.duration) > _COVER_TOLERANCE_S:
        raise DataError(f"{where} covers {supervision.start:.2f}-{supervision.end:.2f} s of its "
                        f"{recording.duration:.2f} s recording; only whole recordings are read. "
                        "Fix: save each segment's audio as its own file")
    audio_path = Path(recording.sources[0].source)
    if not audio_path.is_file():
        raise DataError(f"{where}: audio file {audio_path} not found. Fix: restore it, or write the manifests "
                        "again where the audio is (a relative path is taken from the working directory)")
    written = " ".join((supervision.text or "").split())
    transcript = normalize_transcript(written)
    if not transcript:
        raise DataError(f"{where}: text {written!r} has no letters or digits once normalized. "
                        "Fix: give it its words, or remove the supervision and its recording")
    match = _LIBRISPEECH_ID.fullmatch(supervision.id)
    speaker = supervision.speaker or (match.group(1) if match else recording.id)
    chapter = match.group(2) if match else ""
    return Utterance(supervision.id, speaker, chapter, audio_path, transcript)


def write_lhotse_split(utterances: Sequence[Utterance], manifest_dir: str | Path, split: str, prefix: str,
                       suffix: str = "jsonl.gz", cuts: bool = False) -> list[Path]:
    """Write ``utterances`` as ``split``'s recordings and supervisions manifests (and, with ``cuts``, its
    cuts manifest) with Lhotse's own classes, each file atomically; one recording per utterance, its id the
    utterance id, its source the resolved audio path. Returns the files written."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recordings = RecordingSet.from_recordings(
        Recording.from_file(u.audio_path.resolve(), recording_id=u.utt_id) for u in utterances)
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(id=u.utt_id, recording_id=u.utt_id, start=0.0, duration=recordings[u.utt_id].duration,
                           channel=recordings[u.utt_id].channel_ids[0], text=u.transcript, speaker=u.speaker)
        for u in utterances)
    paths = manifest_paths(manifest_dir, split, prefix, suffix)
    manifests = {"recordings": recordings, "supervisions": supervisions}
    if cuts:
        manifests["cuts"] = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    return [save_atomic(paths[kind], manifest.to_file) for kind, manifest in manifests.items()]
