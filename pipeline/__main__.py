"""`python -m pipeline [overrides]`: compose the Hydra config and run one stage.

Kept thin on purpose: it converts the DictConfig to a typed RunConfig and calls a stage
function; every error the user can fix ends as one `error: ...` line and a non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline import distributed
from pipeline.config import CONF_DIR, run_config_from_dict
from pipeline.errors import PipelineError, disk_full_error
from pipeline.signals import sigterm_as_interrupt


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    from pipeline.stages import STAGE_FUNCTIONS

    try:
        run_cfg = run_config_from_dict(OmegaConf.to_container(cfg, resolve=True))
        with sigterm_as_interrupt():  # every stage: a scheduler's kill ends its run KILLED
            result = STAGE_FUNCTIONS[run_cfg.stage](
                run_cfg, Path(HydraConfig.get().runtime.output_dir)
            )
        # A sweeper (hparams_search=...) optimises what the task returns: stage=search's objective.
        return result if isinstance(result, float) else None
    except PipelineError as exc:
        # SystemExit passes through Hydra's error reporting untouched: one line, exit 1.
        raise SystemExit(f"error: {exc}") from None
    except Exception as exc:  # a full disk under any write the stages do not map themselves
        full = disk_full_error(exc)
        if full is None:
            raise
        where = f"cannot write {full.filename}" if full.filename else "a write failed"
        raise SystemExit(f"error: disk full: {where} ({full.strerror}); free space there") from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM; the message says how to resume
        # An open MLflow run was marked KILLED on the way out (tracking.start_run).
        raise SystemExit(f"interrupted: {str(exc) or 'Ctrl-C'}") from None
    finally:
        distributed.cleanup()  # leave a torchrun process group cleanly


def main() -> None:
    _run()


if __name__ == "__main__":
    sys.exit(main())
