"""`python -m pipeline [overrides]`: compose the Hydra config and run one stage.

Kept thin on purpose: it converts the DictConfig to a typed RunConfig and calls a stage
function; every error the user can fix ends as one `error: ...` line and a non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline import distributed
from pipeline.config import CONF_DIR, run_config_from_dict
from pipeline.errors import PipelineError
from pipeline.signals import sigterm_as_interrupt
from pipeline.tracking import redact_files


def _redact_hydra_records() -> None:
    """Hydra saved the command line (.hydra/*.yaml, a sweep's multirun.yaml) before this
    task began: a tracking.uri's user:password@ comes out of those files first thing."""
    hydra_cfg = HydraConfig.get()
    files = []
    if hydra_cfg.output_subdir is not None:
        files += (Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml")
    if hydra_cfg.mode == RunMode.MULTIRUN:
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    redact_files(path for path in files if path.is_file())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    from pipeline.stages import STAGE_FUNCTIONS

    try:
        _redact_hydra_records()
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
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM; the message says how to resume
        # An open MLflow run was marked KILLED on the way out (tracking.start_run).
        raise SystemExit(f"interrupted: {str(exc) or 'Ctrl-C'}") from None
    finally:
        distributed.cleanup()  # leave a torchrun process group cleanly


def main() -> None:
    _run()


if __name__ == "__main__":
    sys.exit(main())
