"""``python -m openmm_cgml.training DATA.h5... -o MODEL [--config YAML] [--device D] [--seed S] [--no-resume]``.

The entry point of data-parallel training: ``torchrun --nproc-per-node N -m openmm_cgml.training ...`` runs it on
N ranks (gloo on CPU, NCCL on CUDA; see :mod:`~openmm_cgml.training.distributed`); without torchrun it trains in
one process, like ``cgml train``. Bad input gives one line on stderr (from rank 0) and exit status 2.
"""
import argparse
import sys

from . import distributed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openmm_cgml.training",
                                description="train the dynamics + score GNNs on CG datasets (DDP under torchrun)")
    p.add_argument("datasets", nargs="+", help="CG datasets (.h5) written by `cgml reference` or `coarse-grain`")
    p.add_argument("-o", "--output", required=True, help="model directory")
    p.add_argument("--config", default=None, help="YAML of TrainConfig fields (default: built-in defaults)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in --output")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = distributed.init_from_env(args.device)
        from .train import train_main

        train_main(args.datasets, args.output, config_path=args.config, device=device, seed=args.seed,
                   resume=not args.no_resume)
    except (ValueError, OSError, FloatingPointError) as err:
        if distributed.is_main():
            text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
            print(f"cgml train: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if distributed.is_main():
            print("cgml train: interrupted; run the same command again to continue where it stopped",
                  file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
