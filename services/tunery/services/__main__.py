"""`python -m tunery.services {dataset|trainer|registry} [--flags]`: run one service until SIGTERM."""

from __future__ import annotations

import argparse
import importlib

from tunery.services.kit import server, settings

SERVICES = {"dataset": "tunery.services.dataset.servicer", "trainer": "tunery.services.trainer.servicer",
            "registry": "tunery.services.registry.servicer"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tunery.services")
    parser.add_argument("service", choices=sorted(SERVICES))
    config, args = settings.load(argv, parser=parser)
    module = importlib.import_module(SERVICES[args.service])
    server.serve(args.service, config, module.MIGRATIONS, module.setup)


if __name__ == "__main__":
    main()
