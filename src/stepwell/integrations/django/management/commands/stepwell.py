"""`manage.py stepwell worker|dev [options]`: the stepwell CLI with the project's settings.

`worker` runs the functions of `STEPWELL["APP"]` on `STEPWELL["DB"]` (as `stepwell worker`);
`dev` serves them with the API and dashboard on 127.0.0.1:8288 (as `stepwell dev`, without
auto-reload: Django's settings are loaded once, in this process). Other options are passed on
(`manage.py stepwell dev --port 9000`).
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from stepwell.integrations.django.setup import app_target, db_url


class Command(BaseCommand):
    help = "Run a stepwell worker or the dev server for settings.STEPWELL['APP']."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=["worker", "dev"])
        parser.add_argument("options", nargs=argparse.REMAINDER,
                            help="passed on to `stepwell worker` / `stepwell dev`")

    def handle(self, *args: Any, **options: Any) -> None:
        from stepwell import cli

        target = app_target()
        if target is None:
            raise CommandError("set STEPWELL = {'APP': 'module:attribute', ...} in settings")
        argv = [options["action"], target, "--db", db_url(), *options["options"]]
        if options["action"] == "dev" and "--reload" not in argv:
            argv.append("--no-reload")
        cli.main.main(args=argv, prog_name="manage.py stepwell", standalone_mode=False)
