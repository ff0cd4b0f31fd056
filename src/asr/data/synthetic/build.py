"""Build the embedded corpus: synthesized English speech in the exact LibriSpeech layout.

``ROOT/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` (16 kHz mono, 16-bit FLAC) with one
``SPEAKER-CHAPTER.trans.txt`` per chapter, ``SPEAKERS.TXT`` and a ``corpus.json`` manifest
(settings, counts, hours). Splits have disjoint speakers and disjoint sentences. The build
is deterministic for a seed (whatever the number of processes), runs over a process pool with
a progress bar, and is atomic: it is written to ``ROOT.partial`` and renamed when complete, so
an interrupted build never leaves a corpus that looks finished.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr.data.synthetic import text as text_source
from asr.data.synthetic.speakers import Speaker, design_speakers

MANIFEST = "corpus.json"
SAMPLE_RATE = 16000


@dataclass
class CorpusSpec:
    """Every setting of the generator; the defaults live in ``conf/corpus/*.yaml``."""

    out: str
    splits: dict[str, int]  # split name -> utterances; the first split is the training split
    speakers: dict[str, int]  # split name -> number of speakers
    seed: int = 0
    text: str | None = None  # plain-text file; None = Jane Austen from Debian's r-cran-janeaustenr
    text_cache: str = "cache/text"
    top_words: int | None = 1500  # keep sentences made only of the most frequent words; None = all
    min_words: int = 4
    max_words: int = 12
    accents: list[str] = field(default_factory=lambda: ["en", "en-US"])
    variants: list[str] = field(default_factory=lambda: ["m1", "f1"])
    unseen_templates: bool = False  # dev/test voices from templates never heard in train
    rate: tuple[int, int] = (140, 200)  # words per minute
    pitch: tuple[int, int] = (25, 75)
    intonation: tuple[int, int] = (30, 80)
    snr_db: tuple[float, float] = (20.0, 35.0)
    gain: tuple[float, float] = (0.4, 0.9)  # peak-relative level of the speech before noise
    pad_seconds: tuple[float, float] = (0.05, 0.3)  # silence before and after the speech
    jobs: int = 0  # 0 = all cores


@dataclass(frozen=True)
class _Job:
    split: str
    path: str
    text: str
    speaker: Speaker
    seed: tuple[int, int]


def load_sentences(spec: CorpusSpec) -> list[str]:
    """The cleaned, length- and vocabulary-filtered candidate sentences of ``spec``'s text."""
    if spec.text:
        paragraphs = text_source.text_file_paragraphs(spec.text)
    else:
        paragraphs = text_source.austen_paragraphs(text_source.fetch_austen(spec.text_cache))
    sentences = text_source.split_sentences(paragraphs)
    sentences = text_source.filter_length(sentences, spec.min_words, spec.max_words)
    sentences, _ = text_source.restrict_vocabulary(sentences, spec.top_words)
    return sentences


def assign_sentences(sentences: list[str], splits: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Shuffle and deal disjoint sentences to the splits (evaluation splits first)."""
    needed = sum(splits.values())
    if len(sentences) < needed:
        raise text_source.TextSourceError(
            f"the text gives {len(sentences)} usable sentences but the splits need {needed} "
            f"({', '.join(f'{k}={v}' for k, v in splits.items())}); use fewer utterances, raise "
            "--top-words, widen --min-words/--max-words, or give a longer --text"
        )
    order = np.random.default_rng(seed).permutation(len(sentences))
    names = list(splits)
    out, start = {}, 0
    for split in names[1:] + names[:1]:
        out[split] = [sentences[i] for i in order[start : start + splits[split]]]
        start += splits[split]
    return {split: out[split] for split in names}


_CHUNK = 16  # utterances rendered by one worker process, in plan order (see _pool_context)
_WORKER: dict = {}


def _pool_context() -> mp.context.BaseContext:
    """Where the workers come from.

    eSpeak NG keeps synthesis state (pitch flutter, wave phase) between calls, so an utterance
    renders differently after different predecessors. For a corpus that does not depend on
    scheduling or on ``jobs``, each fixed chunk of ``_CHUNK`` utterances is rendered by a fresh
    process (``maxtasksperchild=1``), forked from a server that has imported torch already.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torchaudio", __name__])
        return ctx
    return mp.get_context("spawn")


def _init_worker() -> None:
    import torch
    import torchaudio

    from asr.data.synthetic.espeak import Espeak

    torch.set_num_threads(1)
    engine = Espeak()
    _WORKER["engine"] = engine
    _WORKER["resample"] = torchaudio.transforms.Resample(engine.sample_rate, SAMPLE_RATE)


def _render(job: _Job, spec_noise: dict) -> tuple[str, int]:
    """Synthesize one utterance, degrade it lightly and write it as FLAC; returns (path, samples)."""
    import torch

    rng = np.random.default_rng(list(job.seed))
    espeak_seed = int(np.random.default_rng([*job.seed, 1]).integers(1, 2**31))
    raw = _WORKER["engine"].synthesize(job.text.lower(), job.speaker.voice, seed=espeak_seed)
    if raw.size == 0:
        raise RuntimeError(f"eSpeak produced no audio for {job.text!r} ({job.speaker.voice.name})")
    wave = torch.from_numpy(raw.astype(np.float32) * (0.9 / 32768.0))
    speech = _WORKER["resample"](wave).numpy()
    speech *= rng.uniform(*spec_noise["gain"]) / max(float(np.abs(speech).max()), 1e-6)
    pad = [int(rng.uniform(*spec_noise["pad_seconds"]) * SAMPLE_RATE) for _ in range(2)]
    audio = np.concatenate([np.zeros(pad[0], np.float32), speech, np.zeros(pad[1], np.float32)])
    white = rng.standard_normal(audio.size)
    brown = np.cumsum(rng.standard_normal(audio.size))
    brown -= np.convolve(brown, np.ones(401) / 401, mode="same")  # remove the drift, keep the rumble
    noise = white / white.std() + 0.5 * brown / max(brown.std(), 1e-6)
    snr_db = rng.uniform(*spec_noise["snr_db"])
    speech_power = float(np.mean(speech**2))
    noise *= np.sqrt(speech_power / (10 ** (snr_db / 10)) / np.mean(noise**2))
    audio = np.clip(audio + noise.astype(np.float32), -1.0, 1.0)
    # written in place: the whole corpus is built in <out>.partial and renamed to <out> when complete
    sf.write(job.path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return job.path, audio.size


def build_corpus(spec: CorpusSpec, progress: bool = True) -> dict:
    """Generate the corpus described by ``spec`` into ``spec.out``; returns the manifest.

    A complete corpus already at ``spec.out`` with the same settings is kept as it is; one
    with other settings stops with an error (remove it, or pick another ``--out``).
    """
    out = Path(spec.out)
    settings = {k: v for k, v in asdict(spec).items() if k not in ("out", "jobs", "text_cache")}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from JSON
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        if existing.get("settings") == settings:
            return existing
        raise FileExistsError(f"{out} holds a corpus built with other settings; remove it or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a corpus built by this tool; remove it or choose another --out")
    if set(spec.splits) != set(spec.speakers):
        raise ValueError(f"splits {sorted(spec.splits)} and speakers {sorted(spec.speakers)} must name the same splits")
    for split, n_speakers in spec.speakers.items():
        if not 0 < n_speakers <= spec.splits[split]:
            raise ValueError(f"split {split}: {n_speakers} speakers for {spec.splits[split]} utterances; "
                             "need 1 <= speakers <= utterances")

    start = time.perf_counter()
    sentences = assign_sentences(load_sentences(spec), spec.splits, spec.seed)
    speakers = design_speakers(spec.speakers, spec.accents, spec.variants, spec.rate, spec.pitch,
                               spec.intonation, spec.unseen_templates, spec.seed)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    jobs, transcripts = _plan(partial, sentences, speakers, spec.seed)

    noise = {"gain": spec.gain, "pad_seconds": spec.pad_seconds, "snr_db": spec.snr_db}
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    n_proc = min(spec.jobs or os.cpu_count() or 1, len(chunks))
    samples: dict[str, int] = {}
    with (_pool_context().Pool(n_proc, initializer=_init_worker, maxtasksperchild=1) as pool,
          tqdm(total=len(jobs), desc="synthesizing", unit="utt", disable=not progress) as bar):
        for rendered in pool.imap_unordered(_render_chunk, [(chunk, noise) for chunk in chunks]):
            samples.update(rendered)
            bar.update(len(rendered))

    for trans_path, lines in transcripts.items():
        Path(trans_path).write_text("".join(f"{utt} {text}\n" for utt, text in lines))
    _write_speakers(partial, speakers, jobs, samples)
    manifest = {
        "settings": settings,
        "splits": {
            split: {
                "utterances": len(sentences[split]),
                "speakers": len(speakers[split]),
                "hours": round(sum(samples[j.path] for j in jobs if j.split == split) / SAMPLE_RATE / 3600, 3),
            }
            for split in spec.splits
        },
        "build_seconds": round(time.perf_counter() - start, 1),
        "processes": n_proc,
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return manifest


def _render_chunk(args: tuple[list[_Job], dict]) -> list[tuple[str, int]]:
    chunk, noise = args
    return [_render(job, noise) for job in chunk]


def _plan(root: Path, sentences: dict[str, list[str]], speakers: dict[str, list[Speaker]], seed: int):
    """Deal each split's sentences round-robin to its speakers; create the directories."""
    jobs: list[_Job] = []
    transcripts: dict[str, list[tuple[str, str]]] = {}
    for split_index, (split, texts) in enumerate(sentences.items()):
        per_speaker: dict[int, int] = {}
        for index, text in enumerate(texts):
            speaker = speakers[split][index % len(speakers[split])]
            utt_index = per_speaker.get(speaker.speaker_id, 0)
            per_speaker[speaker.speaker_id] = utt_index + 1
            chapter_dir = root / split / str(speaker.speaker_id) / str(speaker.chapter_id)
            chapter_dir.mkdir(parents=True, exist_ok=True)
            utt_id = f"{speaker.speaker_id}-{speaker.chapter_id}-{utt_index:04d}"
            trans = str(chapter_dir / f"{speaker.speaker_id}-{speaker.chapter_id}.trans.txt")
            transcripts.setdefault(trans, []).append((utt_id, text))
            job_seed = (seed, split_index * 10**6 + index)
            jobs.append(_Job(split, str(chapter_dir / f"{utt_id}.flac"), text, speaker, job_seed))
    return jobs, transcripts


def _write_speakers(root: Path, speakers: dict[str, list[Speaker]], jobs: list[_Job], samples: dict[str, int]):
    minutes: dict[int, float] = {}
    for job in jobs:
        speaker_id = job.speaker.speaker_id
        minutes[speaker_id] = minutes.get(speaker_id, 0.0) + samples[job.path] / SAMPLE_RATE / 60
    lines = [";ID  |SEX| SUBSET | MINUTES | VOICE (eSpeak NG name, rate wpm, pitch, range)"]
    for split, members in speakers.items():
        for s in members:
            v = s.voice
            lines.append(f"{s.speaker_id:<5}| {s.sex} | {split} | {minutes.get(s.speaker_id, 0.0):6.2f} | "
                         f"{v.name} rate={v.rate} pitch={v.pitch} range={v.pitch_range}")
    (root / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")
