"""``python -m pipeline pacs {search,load}``: find studies on a PACS and check a collection before training.

``search`` lists the studies a search finds (numbers, dates, modalities, descriptions, counts,
labels and one-way tokens; never a UID or a patient attribute) and prints the ``--data`` text
that names the collection for ``train`` and ``evaluate``. ``load`` retrieves that collection and
prints what training would get (patients, studies, series, slices per class; notes). The login
comes from ``--user`` (the password from ``LUNGLAB_DICOMWEB_PASSWORD`` or asked for, never a
flag, so it stays out of the shell history) or from ``LUNGLAB_DICOMWEB_USER``/``_PASSWORD``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import sys
from typing import Any, Optional

from pipeline.data.dicomweb import (
    DEFAULT_TIMEOUT,
    ENV_PASSWORD,
    ENV_USER,
    Credentials,
    Pacs,
    PacsQuery,
    date_range,
    format_studies,
    study_token,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pacs",
        help="search a PACS over DICOMweb, and check a PACS collection before training on it",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog="example: python -m pipeline pacs search http://pacs:8042/dicom-web --modality CT "
        "--date 20240101-20241231 --description '*lung*'",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("search", "list the studies a search finds and the --data text naming them"),
        ("load", "retrieve the collection and print what training would get"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument(
            "url", help="the DICOMweb root, e.g. http://pacs:8042/dicom-web (no credentials in it)"
        )
        action.add_argument("--modality", default="", help="a modality the study holds, e.g. CT")
        action.add_argument(
            "--date", default="", help="study dates YYYYMMDD-YYYYMMDD (either end may be left out)"
        )
        action.add_argument(
            "--description", default="", help="Study Description to match; * and ? are wildcards"
        )
        action.add_argument(
            "--study",
            action="append",
            default=[],
            metavar="UID",
            help="only this Study Instance UID (repeatable); the --data text names it by token",
        )
        action.add_argument(
            "--pick",
            action="append",
            default=[],
            metavar="TOKEN",
            help="only the study with this token from an earlier search (repeatable)",
        )
        action.add_argument(
            "--labels",
            default="description",
            help="'description' (class word in the series or study description) or a CSV of uid,label rows",
        )
        action.add_argument("--user", default=None, help=f"user name (password from {ENV_PASSWORD} or asked)")
        action.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the server"
        )
        action.add_argument("--image-size", type=int, default=224, help="scan size for 'load'")
        action.set_defaults(func=run)
    return parser


def _credentials(user: Optional[str]) -> Optional[Credentials]:
    if user is None:
        return None  # the environment's, if any (see pipeline.data.dicomweb.credentials_for)
    password = os.environ.get(ENV_PASSWORD)
    if password is None:
        password = getpass.getpass(f"PACS password for {user}: ") if sys.stdin.isatty() else ""
    return Credentials(user, password)


def run(args: argparse.Namespace) -> int:
    first, last = date_range(args.date)
    query = PacsQuery(
        args.url,
        modality=args.modality,
        date_from=first,
        date_to=last,
        description=args.description,
        labels=args.labels,
        picks=(*args.pick, *(study_token(uid) for uid in args.study)),
    )
    credentials = _credentials(args.user)
    if args.action == "search":
        hits = Pacs(query.url, credentials, timeout=args.timeout).search(query, study_uids=args.study)
        print(format_studies(hits))
        print(
            f"\n{len(hits)} {'study' if len(hits) == 1 else 'studies'} found on {query.url}. "
            f"Train or evaluate on them with:\n  --data {shlex.quote(query.to_source())}"
        )
        if query.label_file is None and hits and not any(hit.label for hit in hits):
            print(
                "No study description names a class (benign, malignant, normal): series descriptions may, "
                "or give --labels <CSV of uid,label rows>."
            )
        if not os.environ.get(ENV_USER) and credentials is not None:
            print(f"A background job reads the login from {ENV_USER} / {ENV_PASSWORD}.")
        return 0
    from pipeline.data.dataset import load_dataset
    from pipeline.data.spec import DataSpec

    spec = DataSpec(source=query.to_source(), image_size=args.image_size)
    dataset = load_dataset(spec, credentials=credentials, progress=None)
    print(f"{dataset.name}: {len(dataset)} slices; per class {dataset.class_counts()}")
    for note in dataset.report.notes:
        print(f"  {note}")
    for item in dataset.report.skipped[:10]:
        print(f"  skipped {item.path}: {item.reason}")
    print(f"Train on it with:\n  --data {shlex.quote(spec.source)}")
    return 0
