"""A PACS as a data source: search (QIDO-RS), retrieve (WADO-RS) and store (STOW-RS) over DICOMweb.

DICOMweb is the HTTP face of a PACS (DICOM PS3.18, https://www.dicomstandard.org/using/dicomweb);
the client is ``dicomweb-client`` (Herrmann et al., "Implementing the DICOM standard for digital
pathology", J Pathol Inform 2018, https://github.com/ImagingDataCommons/dicomweb-client), the one
MONAI Label uses. Orthanc (with its DICOMweb plugin), DCM4CHEE, Google Cloud Healthcare and most
hospital archives speak it.

**Naming a collection.** A ``DataSpec`` names a PACS collection by its source text::

    dicomweb:http://pacs.example:8042/dicom-web?modality=CT&date=20240101-20241231&description=*lung*

with optional ``labels=`` (below) and ``pick=`` (the studies chosen, as one-way tokens). The text
never holds credentials or identifiers, so it can go into run records and MLflow as it stands.
:class:`PacsQuery` parses and writes it.

**Labels.** A study says nothing machine-readable about the diagnosis, so the user says it in
one of two ways, which the ``labels`` setting picks:

- ``labels=description`` (the default): a series is labelled by the class word (``benign``
  (or Kaggle's ``bengin``), ``malignant``, ``normal``; whole words, any case) in its Series
  Description, else in its Study Description (as a research archive curated per class does:
  "LUNG CT - benign"). A description naming no class word, or two, leaves the series unlabelled.
- ``labels=<path of a CSV file>``: rows ``uid,label``, where ``uid`` is a Study or a Series
  Instance UID (a series row wins over its study's) and ``label`` a class name. Only the studies
  the file names are retrieved, so the file is also the study list. The identifiers stay in the
  user's own file; the lab stores only its path.

Unlabelled series are left out and counted in a note, never guessed.

**Privacy.** Retrieved instances are decoded in memory by the same reader as files
(:func:`pipeline.data.scan.open_scan`), grouped by patient with keyed digests
(:mod:`pipeline.data.studies`), and dropped; nothing retrieved is written to disk. Results of a
search carry only numbers, dates, modalities, descriptions, counts and a one-way token per study
(:func:`study_token`); UIDs and patient attributes stay in private fields that are never
printed. While a request runs, the records of ``dicomweb_client`` and ``urllib3`` (which quote
URLs that hold UIDs) are dropped.

**Credentials** (HTTP basic) come from :class:`Credentials` given in the call, from
:func:`remember_credentials` (this process's memory only: the dashboard's session), or from the
environment (``LUNGLAB_DICOMWEB_USER`` / ``LUNGLAB_DICOMWEB_PASSWORD``: background jobs and the
command line). A URL with a user or password in it is refused. No message, record or ``repr``
holds the password.

Every failure (server down, too slow, login refused, not DICOMweb, not DICOM) is a
:class:`PacsError` that says which server and what to do.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Iterator, Mapping, Optional, Sequence
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import numpy as np
import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.constants import CLASSES
from pipeline.data.dicom import ATTACKED_DESCRIPTION, Window, attacked_dicom
from pipeline.data.studies import slice_identity
from pipeline.errors import UserInputError

SCHEME: Final[str] = "dicomweb:"
ENV_USER: Final[str] = "LUNGLAB_DICOMWEB_USER"
ENV_PASSWORD: Final[str] = "LUNGLAB_DICOMWEB_PASSWORD"
#: Seconds to wait for a connection or for the next bytes of an answer.
DEFAULT_TIMEOUT: Final[float] = 30.0
DESCRIPTION_LABELS: Final[str] = "description"
#: At most this many studies are listed by one search.
SEARCH_LIMIT: Final[int] = 500
#: Series Number of a stored adversarial series: high, so viewers list it after the originals.
DERIVED_SERIES_NUMBER: Final[int] = 9901
#: Whole class words in a description; Kaggle's "Bengin" spelling counts as benign.
CLASS_WORD: Final[re.Pattern[str]] = re.compile(r"(?<![a-z])(bengin|benign|malignant|normal)(?![a-z])", re.I)
TOKEN: Final[re.Pattern[str]] = re.compile(r"^[0-9a-f]{16}$")
#: Loggers that quote request URLs (which hold UIDs): their records are dropped during a request.
NOISY_LOGGERS: Final[tuple[str, ...]] = (
    "dicomweb_client.web",
    "dicomweb_client.session_utils",
    "urllib3.connectionpool",
)
#: Patient and study attributes a stored derived series shares with its original, so that a viewer
#: files it in the same study (copied as stored elements, never decoded or shown).
SHARED_WITH_ORIGINAL: Final[tuple[str, ...]] = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)

log = logging.getLogger("lunglab.dicomweb")

# DICOM JSON tags (PS3.18 F.2) read from search answers.
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_STUDY_DATE, _STUDY_DESCRIPTION, _MODALITIES = "00080020", "00081030", "00080061"
_STUDY_SERIES, _STUDY_INSTANCES = "00201206", "00201208"
_MODALITY, _SERIES_DESCRIPTION, _SERIES_NUMBER, _SERIES_INSTANCES = (
    "00080060",
    "0008103E",
    "00200011",
    "00201209",
)
_POSITION_TAGS: Final[tuple[str, ...]] = ("00200032", "00200037", "00201041", "00200013")


class PacsError(UserInputError):
    """The PACS could not be used: unreachable, too slow, login refused, or not answering DICOM(web)."""


# --- quiet requests ------------------------------------------------------------------------------

_quiet = threading.local()


class _DropDuringRequest(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "depth", 0)


_DROP = _DropDuringRequest()
for _name in NOISY_LOGGERS:
    logging.getLogger(_name).addFilter(_DROP)


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """Drop the client libraries' log records (and parser warnings) made by this thread meanwhile."""
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet.depth -= 1


# --- credentials ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """HTTP basic credentials; ``repr`` and ``str`` never show the password."""

    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return "Credentials(user=<given>, password=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled (nor cached by anything that pickles)
        raise TypeError("credentials are never serialised")


_REMEMBERED: dict[str, Credentials] = {}
_REMEMBERED_LOCK = threading.Lock()


def remember_credentials(url: str, credentials: Optional[Credentials]) -> None:
    """Hold ``credentials`` for the server at ``url`` in this process's memory (None forgets them)."""
    key = server_url(url)
    with _REMEMBERED_LOCK:
        if credentials is None:
            _REMEMBERED.pop(key, None)
        else:
            _REMEMBERED[key] = credentials


def remembered_env() -> dict[str, str]:
    """The environment a background job needs to log in as this process does: the one remembered login.

    Empty unless exactly one server's credentials are remembered (the variables hold one login).
    The password travels in the child's environment only, never on its command line or on disk.
    """
    with _REMEMBERED_LOCK:
        remembered = list(_REMEMBERED.values())
    if len(remembered) != 1:
        return {}
    return {ENV_USER: remembered[0].user, ENV_PASSWORD: remembered[0].password}


def credentials_for(url: str, given: Optional[Credentials] = None) -> Optional[Credentials]:
    """``given``, else those remembered for ``url``, else the environment's; None when none is set."""
    if given is not None:
        return given
    with _REMEMBERED_LOCK:
        remembered = _REMEMBERED.get(server_url(url))
    if remembered is not None:
        return remembered
    user = os.environ.get(ENV_USER)
    return Credentials(user, os.environ.get(ENV_PASSWORD, "")) if user else None


# --- naming a collection -------------------------------------------------------------------------


def is_dicomweb_source(source: str) -> bool:
    """Whether a DataSpec source names a PACS collection (``dicomweb:http...``)."""
    return str(source).strip().lower().startswith(SCHEME)


def server_url(url: str) -> str:
    """``url`` checked and normalised (no trailing slash); refuses one that holds credentials.

    Raises :class:`PacsError` for a URL that is not http(s) with a host, or that holds a user
    name or password (the message does not repeat the URL).
    """
    text = str(url).strip()
    if text.lower().startswith(SCHEME):
        text = text[len(SCHEME) :]
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise PacsError(
            "the PACS address is not a valid URL; write it like http://pacs.example:8042/dicom-web"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise PacsError(
            "the PACS address holds a user name or password; remove them from the URL (it is stored in run "
            f"records) and give them in the user and password fields, or as {ENV_USER} / {ENV_PASSWORD}"
        )
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PacsError(
            f"the PACS address must start with http:// or https:// and name a host, like "
            f"http://pacs.example:8042/dicom-web (got {text[:80]!r})"
        )
    netloc = parts.hostname + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def study_token(study_uid: str) -> str:
    """A one-way token (16 hex digits of SHA-256) naming a study in a source text without its UID."""
    return hashlib.sha256(
        b"lunglab-dicomweb-study\0" + study_uid.strip().encode("ascii", "replace")
    ).hexdigest()[:16]


def _date(text: str, what: str) -> str:
    digits = text.strip().replace("-", "")
    if digits and not re.fullmatch(r"\d{8}", digits):
        raise PacsError(f"the {what} date must be YYYYMMDD or YYYY-MM-DD (got {text[:20]!r})")
    return digits


_DAY = r"(\d{4}-?\d{2}-?\d{2})"


def date_range(text: str) -> tuple[str, str]:
    """``YYYYMMDD-YYYYMMDD`` (either end may be empty; ISO days too) or one day, as (first, last)."""
    text = text.strip()
    if not text:
        return "", ""
    single = re.fullmatch(_DAY, text)
    if single:
        return single.group(1), single.group(1)
    span = re.fullmatch(rf"{_DAY}?\s*-\s*{_DAY}?", text)
    if span is None:
        raise PacsError(
            f"a study date range is written YYYYMMDD-YYYYMMDD (either end may be left out; got {text[:30]!r})"
        )
    return span.group(1) or "", span.group(2) or ""


@dataclass(frozen=True)
class PacsQuery:
    """A PACS collection: the server and the search that selects its studies, with how labels come.

    ``date_from``/``date_to`` are YYYYMMDD (either may be empty); ``description`` matches the
    Study Description (``*`` and ``?`` are wildcards, case as the server does it); ``modality``
    must be among the study's modalities; ``picks`` keeps only the studies with these
    :func:`study_token` tokens; ``labels`` is ``"description"`` or the path of a CSV file (see
    the module docstring). Raises :class:`PacsError` for a bad value.
    """

    url: str
    modality: str = ""
    date_from: str = ""
    date_to: str = ""
    description: str = ""
    labels: str = DESCRIPTION_LABELS
    picks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", server_url(self.url))
        modality = self.modality.strip().upper()
        if modality and not re.fullmatch(r"[A-Z0-9_]{1,16}", modality):
            raise PacsError(f"a modality is a short code such as CT or MR (got {self.modality[:20]!r})")
        object.__setattr__(self, "modality", modality)
        object.__setattr__(self, "date_from", _date(self.date_from, "first"))
        object.__setattr__(self, "date_to", _date(self.date_to, "last"))
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise PacsError("the first study date is after the last one; swap them")
        object.__setattr__(self, "description", self.description.strip())
        object.__setattr__(self, "labels", self.labels.strip() or DESCRIPTION_LABELS)
        picks = tuple(sorted({pick.strip().lower() for pick in self.picks if pick.strip()}))
        bad = [pick for pick in picks if not TOKEN.match(pick)]
        if bad:
            raise PacsError(
                f"a picked study is named by a 16-digit hex token from a search (got {bad[0][:20]!r})"
            )
        object.__setattr__(self, "picks", picks)

    @property
    def label_file(self) -> Optional[Path]:
        """The CSV file that labels the studies, or None when descriptions do."""
        return None if self.labels.lower() == DESCRIPTION_LABELS else Path(self.labels).expanduser()

    def to_source(self) -> str:
        """The DataSpec source text: ``dicomweb:<url>?<settings>`` (no credentials, no identifiers)."""
        settings = {
            "modality": self.modality,
            "description": self.description,
            "date": f"{self.date_from}-{self.date_to}" if self.date_from or self.date_to else "",
            "labels": "" if self.label_file is None else self.labels,
            "pick": ",".join(self.picks),
        }
        query = urlencode(
            {key: value for key, value in settings.items() if value}, safe="*?,/-", quote_via=quote
        )
        return f"{SCHEME}{self.url}" + (f"?{query}" if query else "")

    @classmethod
    def from_source(cls, source: str) -> PacsQuery:
        """Parse a source text written by :meth:`to_source` (or by hand). Raises :class:`PacsError`."""
        text = str(source).strip()
        if not is_dicomweb_source(text):
            raise PacsError(
                f"a PACS source starts with {SCHEME!r}, like {SCHEME}http://pacs.example:8042/dicom-web"
            )
        url, _, query = text[len(SCHEME) :].partition("?")
        values: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in ("modality", "description", "date", "labels", "pick"):
                raise PacsError(
                    f"unknown setting {key[:30]!r} in the PACS source; known: modality, description, "
                    "date (YYYYMMDD-YYYYMMDD), labels (description or a CSV path), pick"
                )
            values[key] = value
        first, last = date_range(values.get("date", ""))
        return cls(
            url,
            modality=values.get("modality", ""),
            date_from=first,
            date_to=last,
            description=values.get("description", ""),
            labels=values.get("labels", DESCRIPTION_LABELS),
            picks=tuple(values.get("pick", "").split(",")),
        )

    def search_filters(self) -> dict[str, str]:
        """QIDO-RS matching keys for this search (PS3.18 8.3.4)."""
        filters = {}
        if self.modality:
            filters["ModalitiesInStudy"] = self.modality
        if self.date_from or self.date_to:
            filters["StudyDate"] = f"{self.date_from}-{self.date_to}"
        if self.description:
            filters["StudyDescription"] = self.description
        return filters


# --- what a search finds -------------------------------------------------------------------------


def label_of(*descriptions: str) -> Optional[str]:
    """The class named by the first description that names exactly one class word; None if none does."""
    for text in descriptions:
        words = {match.lower() for match in CLASS_WORD.findall(text or "")}
        classes = {"benign" if word == "bengin" else word for word in words}
        if len(classes) == 1:
            return classes.pop()
        if len(classes) > 1:
            return None
    return None


@dataclass(frozen=True)
class StudyHit:
    """One study a search found, as it may be shown: no UID, no patient attribute.

    ``date`` is ISO (``YYYY-MM-DD``) or empty; ``label`` is the class its Study Description names
    (None if none); ``token`` is :func:`study_token` of its UID.
    """

    number: int
    date: str
    modalities: str
    description: str
    series: Optional[int]
    instances: Optional[int]
    label: Optional[str]
    token: str
    uid: str = field(repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The fields a table shows."""
        return {
            "study": self.number,
            "date": self.date,
            "modalities": self.modalities,
            "description": self.description,
            "series": self.series,
            "slices": self.instances,
            "label": self.label or "",
            "token": self.token,
        }


@dataclass(frozen=True)
class SeriesHit:
    """One series of a study: its number, modality, description, slice count and label (no UID)."""

    number: Optional[int]
    modality: str
    description: str
    instances: Optional[int]
    label: Optional[str]
    study_uid: str = field(repr=False, compare=False)
    uid: str = field(repr=False, compare=False)

    def title(self) -> str:
        count = f", {self.instances} slices" if self.instances is not None else ""
        return (
            f"series {self.number if self.number is not None else '?'} · {self.modality or '?'} · "
            f"{self.description or 'no description'}{count}"
        )


@dataclass(frozen=True)
class SliceHit:
    """One instance of a series in slice order (``rank`` 0..); ``position``: mm along the normal, or None."""

    rank: int
    position: Optional[float]
    instance: Optional[int]
    study_uid: str = field(repr=False, compare=False)
    series_uid: str = field(repr=False, compare=False)
    uid: str = field(repr=False, compare=False)


@dataclass(frozen=True)
class StoredSeries:
    """What a STOW-RS store did: how many instances the server took into a new series, and its description."""

    instances: int
    description: str
    series_uid: str = field(repr=False, compare=False)


def _value(item: Mapping[str, Any], tag: str) -> Any:
    entry = item.get(tag) if isinstance(item, Mapping) else None
    values = entry.get("Value") if isinstance(entry, Mapping) else None
    return values[0] if isinstance(values, list) and values else None


def _text(item: Mapping[str, Any], tag: str) -> str:
    value = _value(item, tag)
    return "" if value is None else str(value).strip()


def _values(item: Mapping[str, Any], tag: str) -> list[str]:
    entry = item.get(tag) if isinstance(item, Mapping) else None
    values = entry.get("Value") if isinstance(entry, Mapping) else None
    return [str(value) for value in values] if isinstance(values, list) else []


def _int(item: Mapping[str, Any], tag: str) -> Optional[int]:
    try:
        return int(_value(item, tag))
    except (TypeError, ValueError):
        return None


def _iso(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}" if re.fullmatch(r"\d{8}", date) else ""


# --- the client ----------------------------------------------------------------------------------


class Pacs:
    """A DICOMweb server: ``Pacs(url, credentials, timeout=30)``.

    ``url`` is the DICOMweb root (Orthanc: ``http://host:8042/dicom-web``); ``credentials``
    default to :func:`credentials_for`. ``timeout`` is in seconds, for connecting and for each
    wait on the answer. Every method raises :class:`PacsError` with a message naming the server
    (never the credentials or an identifier) when the server cannot be used.
    """

    def __init__(
        self, url: str, credentials: Optional[Credentials] = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.url = server_url(url)
        if not (0 < float(timeout) <= 3600):
            raise PacsError("the PACS timeout must be between 0 and 3600 seconds")
        self.timeout = float(timeout)
        session = requests.Session()
        given = credentials_for(self.url, credentials)
        if given is not None:
            session.auth = (given.user, given.password)
        self._session = session
        self._client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
        self._client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=200)

    def __repr__(self) -> str:
        return f"Pacs({self.url!r})"

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Turn whatever the request raises into a :class:`PacsError` that says what to do."""
        where = f"the PACS at {self.url}"
        try:
            with _quietly():
                yield
        except PacsError:
            raise
        except requests.exceptions.JSONDecodeError:
            raise PacsError(
                f"{where} answered {what} with something that is not DICOMweb (not JSON); check that "
                "the address is the server's DICOMweb root (Orthanc: http://host:8042/dicom-web)"
            ) from None
        except requests.exceptions.Timeout:
            raise PacsError(
                f"{where} did not answer within {self.timeout:g} s while {what}; it may be busy or "
                "down. Try again later or with a longer timeout"
            ) from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise PacsError(f"{where} {_status_words(status, what)}") from None
        except requests.exceptions.ConnectionError:
            raise PacsError(
                f"cannot reach {where} while {what} (connection refused, or no such host); check the "
                "address and that the server is running"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(
                f"the request to {where} failed while {what} ({type(exc).__name__}); check the address"
            ) from None
        except Exception as exc:  # an answer that is not DICOM JSON / multipart DICOM fails in many ways
            log.info("unreadable DICOMweb answer: %s", type(exc).__name__)
            raise PacsError(
                f"{where} answered {what} with something that is not DICOMweb or DICOM "
                f"({type(exc).__name__}); check that the address is the server's DICOMweb root "
                "(Orthanc: http://host:8042/dicom-web)"
            ) from None

    def _json_list(self, answer: Any, what: str) -> list[Mapping[str, Any]]:
        if not isinstance(answer, list) or not all(isinstance(item, Mapping) for item in answer):
            raise PacsError(
                f"the PACS at {self.url} answered {what} with something that is not a DICOMweb "
                "search result; check that the address is the server's DICOMweb root"
            )
        return answer

    def _qido(self, path: str, params: Mapping[str, Any], what: str) -> list[Mapping[str, Any]]:
        """A QIDO-RS search (PS3.18 10.6) at ``path`` below the root; inside :meth:`_talking`.

        Built here rather than by the client library, which percent-encodes ``*`` and ``?``: some
        servers (Orthanc 1.10 with DICOMweb 1.7) then match them literally. Both are legal in a
        URL query, so they are sent as they are; a space, which such a server cannot match
        either, is sent as the single-character wildcard ``?``.
        """
        parts = []
        for key, value in params.items():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                parts.append(f"{quote(str(key))}={quote(str(item).replace(' ', '?'), safe='*?,-.')}")
        answer = self._session.get(
            f"{self.url}/{path}" + ("?" + "&".join(parts) if parts else ""),
            headers={"Accept": "application/dicom+json"},
            timeout=self.timeout,
        )
        answer.raise_for_status()
        if answer.status_code == 204 or not answer.content.strip():
            return []
        kind = answer.headers.get("Content-Type", "no content type").split(";")[0].strip()[:60]
        if "json" not in kind.lower():
            raise PacsError(
                f"the PACS at {self.url} answered {what} with something that is not DICOMweb ({kind}); "
                "check that the address is the server's DICOMweb root (Orthanc: http://host:8042/dicom-web)"
            )
        return self._json_list(answer.json(), what)

    def search(
        self, query: Optional[PacsQuery] = None, *, study_uids: Sequence[str] = (), limit: int = SEARCH_LIMIT
    ) -> list[StudyHit]:
        """Studies matching ``query``'s filters (and picks), or exactly ``study_uids`` when given.

        Returns at most ``limit`` studies, numbered 1.. in order of date, description and token.
        """
        filters = query.search_filters() if query is not None else {}
        fields = {
            "includefield": [
                "StudyDate",
                "StudyDescription",
                "ModalitiesInStudy",
                "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances",
            ]
        }
        found: list[Mapping[str, Any]] = []
        with self._talking("searching for studies"):
            if study_uids:
                for uid in dict.fromkeys(uid.strip() for uid in study_uids if uid.strip()):
                    found += self._qido(
                        "studies", {**filters, **fields, "StudyInstanceUID": uid}, "a study search"
                    )
            else:
                found = self._qido("studies", {**filters, **fields, "limit": limit}, "a study search")
        hits = []
        for item in found:
            uid = _text(item, _STUDY_UID)
            if not uid:
                continue
            description = _text(item, _STUDY_DESCRIPTION)
            hits.append(
                StudyHit(
                    0,
                    _iso(_text(item, _STUDY_DATE)),
                    "/".join(_values(item, _MODALITIES)),
                    description,
                    _int(item, _STUDY_SERIES),
                    _int(item, _STUDY_INSTANCES),
                    label_of(description),
                    study_token(uid),
                    uid,
                )
            )
        if query is not None and query.picks:
            hits = [hit for hit in hits if hit.token in query.picks]
        unique = {hit.token: hit for hit in hits}.values()
        ordered = sorted(unique, key=lambda hit: (hit.date, hit.description, hit.token))[:limit]
        return [replace(hit, number=number) for number, hit in enumerate(ordered, start=1)]

    def series(self, study: StudyHit) -> list[SeriesHit]:
        """The series of ``study`` by Series Number, labelled by its own description, else the study's."""
        with self._talking("listing the series of a study"):
            found = self._qido(
                f"studies/{quote(study.uid, safe='.')}/series",
                {
                    "includefield": [
                        "Modality",
                        "SeriesDescription",
                        "SeriesNumber",
                        "NumberOfSeriesRelatedInstances",
                    ]
                },
                "a series search",
            )
        hits = []
        for item in found:
            uid = _text(item, _SERIES_UID)
            if uid:
                description = _text(item, _SERIES_DESCRIPTION)
                hits.append(
                    SeriesHit(
                        _int(item, _SERIES_NUMBER),
                        _text(item, _MODALITY),
                        description,
                        _int(item, _SERIES_INSTANCES),
                        label_of(description, study.description),
                        study.uid,
                        uid,
                    )
                )
        return sorted(
            hits,
            key=lambda hit: (
                hit.number is None,
                hit.number or 0,
                hit.description,
                hashlib.sha256(hit.uid.encode()).hexdigest(),
            ),
        )

    def slices(self, series: SeriesHit) -> list[SliceHit]:
        """The instances of ``series`` in slice order (position along the normal, then Instance Number)."""
        with self._talking("reading the slice positions of a series"):
            found = self._json_list(
                self._client.retrieve_series_metadata(series.study_uid, series.uid), "a metadata request"
            )
            placed = []
            for item in found:
                uid = _text(item, _SOP_UID)
                if not uid:
                    continue
                view = Dataset.from_json({tag: item[tag] for tag in _POSITION_TAGS if tag in item})
                identity = slice_identity(view, view)
                placed.append((identity.position, identity.instance, uid))
        placed.sort(
            key=lambda entry: (
                entry[0] is None,
                entry[0] or 0.0,
                entry[1] is None,
                entry[1] or 0,
                hashlib.sha256(entry[2].encode()).hexdigest(),
            )
        )
        return [
            SliceHit(rank, position, instance, series.study_uid, series.uid, uid)
            for rank, (position, instance, uid) in enumerate(placed)
        ]

    def retrieve_series(self, series: SeriesHit) -> list[bytes]:
        """Every instance of ``series`` as Part 10 bytes (uncompressed when the server can transcode)."""
        with self._talking("retrieving a series"):
            return [_part10(ds) for ds in self._client.retrieve_series(series.study_uid, series.uid)]

    def retrieve_slice(self, item: SliceHit) -> bytes:
        """One instance as Part 10 bytes."""
        with self._talking("retrieving a slice"):
            return _part10(self._client.retrieve_instance(item.study_uid, item.series_uid, item.uid))

    def store_derived(
        self, original: bytes, attacked: np.ndarray, *, window: Window = "lung", method: str = ""
    ) -> StoredSeries:
        """Store ``attacked`` (uint8 ``[H, W]``) as a NEW derived series beside ``original`` (STOW-RS).

        The object is :func:`derived_instance`'s: new Series and SOP Instance UIDs, ImageType
        DERIVED\\SECONDARY, a Series Description marking it as adversarial research output not for
        diagnosis. The original is never sent, changed or deleted. Raises :class:`PacsError` when
        the server refuses it (a read-only user gets HTTP 403).
        """
        data = derived_instance(original, attacked, window=window, method=method)
        with self._talking("storing the attacked slice"):
            ds = pydicom.dcmread(io.BytesIO(data))
            answer = self._client.store_instances([ds], study_instance_uid=_raw_text(ds, "StudyInstanceUID"))
            failed = answer.get("FailedSOPSequence") if answer is not None else None
            if failed:
                raise PacsError(
                    f"the PACS at {self.url} refused to store the attacked slice (it lists it as "
                    "failed); ask its administrator whether this user may store"
                )
        return StoredSeries(1, str(ds.SeriesDescription), str(ds.SeriesInstanceUID))


def _status_words(status: int, what: str) -> str:
    if status == 401:
        return (
            f"refused the login (HTTP 401) while {what}: check the user name and password "
            f"(or {ENV_USER} / {ENV_PASSWORD})"
        )
    if status == 403:
        return (
            f"refused access (HTTP 403) while {what}: this user may not do this; ask the PACS administrator"
        )
    if status == 404:
        return (
            f"has no such DICOMweb resource (HTTP 404) while {what}: check that the address is the server's "
            "DICOMweb root (Orthanc: http://host:8042/dicom-web) and that the study is still there"
        )
    if status in (408, 429, 503, 504):
        return f"is busy (HTTP {status}) while {what}; try again later"
    return f"answered HTTP {status} while {what}; check the address, or the server's log"


def _part10(ds: Dataset) -> bytes:
    """A retrieved data set back as Part 10 bytes, as a file holds it (no element decoded)."""
    if not isinstance(ds, Dataset):
        raise PacsError("the PACS answered a retrieve with something that is not DICOM")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    return buffer.getvalue()


def _raw_text(ds: Dataset, keyword: str) -> str:
    element = ds.get(keyword)
    return "" if element is None else str(element).strip()


def derived_instance(
    original: bytes, attacked: np.ndarray, *, window: Window = "lung", method: str = ""
) -> bytes:
    """An attacked slice as a new derived instance of the original's study, for storing back.

    Built by :func:`pipeline.data.dicom.attacked_dicom` (the pixels mapped back through
    ``window``, so a viewer shows Hounsfield units; ``attacked`` is uint8 ``[H, W]``), then given
    the original's patient and study attributes (so a viewer files it in the same study), a new
    Series and SOP Instance UID, ImageType ``DERIVED\\SECONDARY``, the Series Description
    :data:`pipeline.data.dicom.ATTACKED_DESCRIPTION`, a Derivation Description naming ``method``,
    and a Source Image Sequence pointing at the original. Raises ``ScanError`` when ``original``
    is not a readable DICOM image.
    """
    out = pydicom.dcmread(io.BytesIO(attacked_dicom(original, attacked, window)))
    with warnings.catch_warnings():  # a parser warning about an odd value would quote it
        warnings.simplefilter("ignore")
        source = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True, force=True)
        for keyword in SHARED_WITH_ORIGINAL:
            if keyword in source:
                out[keyword] = source[keyword]  # copied as it stands, never shown or logged
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
        if keyword in out:
            del out[keyword]
    out.SeriesInstanceUID = generate_uid()
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.SeriesNumber = DERIVED_SERIES_NUMBER
    out.ImageType = ["DERIVED", "SECONDARY"]
    out.SeriesDescription = ATTACKED_DESCRIPTION
    out.DerivationDescription = (
        f"Adversarial perturbation ({method or 'an attack'}) made for robustness research "
        "by the lung CT robustness lab. NOT FOR DIAGNOSIS"
    )[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.get("SOPClassUID", "")
    reference.ReferencedSOPInstanceUID = source.get("SOPInstanceUID", "")
    out.SourceImageSequence = [reference]
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, out, enforce_file_format=True)
    return buffer.getvalue()


# --- labelling a collection ----------------------------------------------------------------------


def read_label_file(path: Path) -> dict[str, str]:
    """UID -> class from a CSV of ``uid,label`` rows (a header row is skipped). Raises :class:`PacsError`.

    The messages name line numbers and labels, never a UID.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PacsError(
            f"the label file {Path(path).name} does not exist; check the path in labels="
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PacsError(
            f"the label file {Path(path).name} cannot be read ({type(exc).__name__}); save it as UTF-8 CSV"
        ) from None
    mapping: dict[str, str] = {}
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 2:
            raise PacsError(f"line {line} of the label file has no label; write rows as uid,label")
        uid, label = cells[0], cells[1].lower()
        if line == 1 and not re.fullmatch(r"[0-9.]+", uid):
            continue  # a header
        label = "benign" if label == "bengin" else label
        if label not in CLASSES:
            raise PacsError(
                f"line {line} of the label file names the class {cells[1][:30]!r}; use one of "
                f"{', '.join(CLASSES)}"
            )
        if not re.fullmatch(r"[0-9.]{1,64}", uid):
            raise PacsError(
                f"line {line} of the label file does not start with a Study or Series Instance UID "
                "(digits and dots)"
            )
        if mapping.get(uid, label) != label:
            raise PacsError(f"line {line} of the label file gives a UID a second, different label")
        mapping[uid] = label
    if not mapping:
        raise PacsError(f"the label file {Path(path).name} holds no uid,label rows")
    return mapping


@dataclass
class Collection:
    """The labelled series a :class:`PacsQuery` selects, and notes (counts only) on what was left out."""

    series: list[tuple[SeriesHit, str]]
    studies: int
    notes: list[str]


def labelled_series(pacs: Pacs, query: PacsQuery) -> Collection:
    """Search ``query``'s studies and label their series (module docstring).

    Raises :class:`PacsError` when no study is found or no series is labelled.

    Left out, each counted in a note: series of another modality than ``query.modality`` (the
    localisers and reports of a CT study), adversarial series this lab stored back (their
    Series Description is :data:`ATTACKED_DESCRIPTION`: they must never be trained on as scans
    of their study's class), and unlabelled series.
    """
    mapping = read_label_file(query.label_file) if query.label_file is not None else None
    study_uids: list[str] = []
    if mapping is not None:
        study_uids = list(mapping)
        with pacs._talking("finding the studies of the label file's series"):  # rows may name series only
            for uid in mapping:
                study_uids += [
                    _text(item, _STUDY_UID)
                    for item in pacs._qido(
                        "series",
                        {"SeriesInstanceUID": uid, "includefield": "StudyInstanceUID"},
                        "a series search",
                    )
                ]
    hits = pacs.search(query, study_uids=[uid for uid in study_uids if uid])
    if not hits:
        raise PacsError(
            f"the search found no study on the PACS at {pacs.url}; widen the dates or the description, "
            "or check the label file's UIDs"
        )
    chosen: list[tuple[SeriesHit, str]] = []
    unlabelled = other_modality = adversarial = 0
    for study in hits:
        for series in pacs.series(study):
            if series.description == ATTACKED_DESCRIPTION:
                adversarial += 1
                continue
            if query.modality and series.modality and series.modality.upper() != query.modality:
                other_modality += 1
                continue
            label = (
                (mapping.get(series.uid) or mapping.get(study.uid)) if mapping is not None else series.label
            )
            if label is None:
                unlabelled += 1
            else:
                chosen.append((series, label))
    notes = [f"PACS {pacs.url}: {len(hits)} studies found, {len(chosen)} labelled series retrieved"]
    if unlabelled:
        how = (
            "the label file names neither them nor their study"
            if mapping is not None
            else "their series and study descriptions name no single class (benign, malignant or normal)"
        )
        notes.append(f"{unlabelled} series left out: {how}")
    if other_modality:
        notes.append(f"{other_modality} series of another modality than {query.modality} left out")
    if adversarial:
        notes.append(
            f"{adversarial} adversarial series stored back by this lab left out (they are not scans "
            "of their study's class)"
        )
    if not chosen:
        raise PacsError(
            f"none of the {len(hits)} studies found has a labelled series: "
            f"{notes[-1].split(': ', 1)[-1]}. Label them by description or with labels=<CSV file>"
        )
    return Collection(chosen, len(hits), notes)


def format_studies(hits: Sequence[StudyHit]) -> str:
    """A plain-text table of search results (numbers, dates, descriptions, counts, labels and tokens only)."""
    rows = [hit.row() for hit in hits]
    if not rows:
        return "no study found"
    columns = list(rows[0])
    cells = [[str(row[column] if row[column] is not None else "") for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[index]) for line in cells)) for index, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def describe(query: PacsQuery) -> str:
    """A short human description of a collection (no identifiers), for dataset names."""
    parts = [urlsplit(query.url).netloc]
    if query.modality:
        parts.append(query.modality)
    if query.description:
        parts.append(json.dumps(query.description))
    if query.picks:
        parts.append(f"{len(query.picks)} picked studies")
    return "PACS " + ", ".join(parts)
