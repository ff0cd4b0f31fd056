"""Experiment tracking: a W&B logger that is offline unless the user is logged in."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

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


def wandb_logger(project: str, group: str, job_type: str, save_dir: str, name: str | None = None,
                 tags: list[str] | None = None) -> WandbLogger:
    """A Lightning ``WandbLogger`` for one stage of the pipeline (``group``/``job_type`` = the stage).

    Offline runs land in ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.
    """
    mode = wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    log.info("W&B mode: %s (set WANDB_MODE=online after 'wandb login' to sync)", mode)
    return WandbLogger(project=project, group=group, job_type=job_type, save_dir=save_dir, name=name,
                       tags=list(tags or []), offline=mode == "offline", mode=mode, log_model=False)
