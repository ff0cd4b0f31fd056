"""Experiment tracking: a W&B logger that is offline unless the user is logged in."""

from __future__ import annotations

import json
import logging
import os
import secrets
import string
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from common.atomic import write_json_atomic

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """``online`` when ``WANDB_MODE=online`` or an API key is configured (``wandb login``), else ``offline``.

    An explicit ``WANDB_MODE`` (``online``, ``offline``, ``disabled``) always wins.
    """
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


RUN_ID_FILE = "wandb_run.json"
"""The W&B run id of a run directory (``{"id": ...}``), written before the run starts: a resumed run continues it."""


def run_id(save_dir: str | Path, resume: bool) -> str:
    """The W&B run id for a run in ``save_dir``: the recorded one when the run resumes and one is recorded, else a
    new id, recorded atomically in ``save_dir/wandb_run.json`` (by rank 0 only: the other ranks of a data-parallel
    run log nothing)."""
    path = Path(save_dir) / RUN_ID_FILE
    if resume and path.is_file():
        try:
            return str(json.loads(path.read_text())["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s is damaged: the resumed run gets a new W&B run", path)
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as W&B's own ids
    if rank_zero_only.rank == 0:
        write_json_atomic(path, {"id": new})
    return new


def wandb_logger(project: str, group: str, job_type: str, save_dir: str, name: str | None = None,
                 tags: list[str] | None = None, resume_from: str | None = None) -> WandbLogger:
    """A Lightning ``WandbLogger`` for one stage of the pipeline (``group``/``job_type`` = the stage).

    Offline runs land in ``save_dir/wandb`` and can be uploaded later with ``wandb sync``. With ``resume_from``
    (the checkpoint a training resumes from, ``ckpt_path``) the W&B run recorded in ``save_dir`` goes on (same
    id, ``resume="allow"``); otherwise a new run starts and its id is recorded (:func:`run_id`).
    """
    mode = wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    log.info("W&B mode: %s (set WANDB_MODE=online after 'wandb login' to sync)", mode)
    return WandbLogger(project=project, group=group, job_type=job_type, save_dir=save_dir, name=name,
                       tags=list(tags or []), offline=mode == "offline", mode=mode, log_model=False,
                       id=run_id(save_dir, resume=bool(resume_from)), resume="allow")
