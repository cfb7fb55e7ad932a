"""A PACS as a data source, against a real Orthanc with its DICOMweb plugin on loopback (no mock).

The server is loaded with the DICOM studies of ``tests/dicom_studies.py`` (12 patients, 15
studies, 18 series), each study described as "Chest CT - <class>", plus a CT study whose
description names no class and an MR study of another year. Every identifier in them is a
marker string, searched for in every output, log record, warning, record and message.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
import pytest
import torch

from pipeline.__main__ import main
from pipeline.attacks import get_attack
from pipeline.data import DataSpec, leakage_report, load_dataset, open_scan, preprocess_image, split_dataset
from pipeline.data.dicom import ATTACKED_DESCRIPTION
from pipeline.data.dicomweb import (
    ENV_PASSWORD,
    ENV_USER,
    Credentials,
    Pacs,
    PacsError,
    PacsQuery,
    SliceHit,
    format_studies,
    label_of,
    remember_credentials,
    remembered_env,
)
from tests.dicom_studies import MARK, UID_ROOT
from tests.models_fixture import one_thread, trained_model
from tests.orthanc_server import (
    PASSWORD,
    USER,
    Loaded,
    running_pacs,
    silent_server,
    web_page_server,
)

LOGIN = Credentials(USER, PASSWORD)


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    yield from running_pacs(tmp_path_factory)


@pytest.fixture(autouse=True)
def _no_remembered_login(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_USER, raising=False)
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    yield


def _assert_private(texts: list[str], loaded: Loaded) -> None:
    assert any(MARK in value for value in loaded.identifiers) and any(
        UID_ROOT in value for value in loaded.identifiers
    )
    for secret in [*loaded.identifiers, MARK, UID_ROOT, PASSWORD]:
        leaked = [text[:200] for text in texts if secret in text]
        assert not leaked, f"{secret!r} shown, logged or recorded: {leaked[:2]}"


def test_search_by_modality_date_description_and_study_list(pacs_server: Loaded) -> None:
    pacs = Pacs(pacs_server.server.dicomweb, LOGIN)
    ct = pacs.search(PacsQuery(pacs.url, modality="CT"))
    assert len(ct) == 16  # 15 labelled studies and the follow-up
    assert [hit.number for hit in ct] == list(range(1, 17))
    assert (
        sorted(hit.label or "" for hit in ct).count("malignant") == 5
    )  # patient 1 of each class has 2 studies
    assert sum(hit.instances or 0 for hit in ct if hit.label) == sum(pacs_server.slices.values())
    mr = pacs.search(PacsQuery(pacs.url, date_from="2022-01-01", date_to="20221231"))
    assert [(hit.modalities, hit.label, hit.date) for hit in mr] == [("MR", "malignant", "2022-01-01")]
    described = pacs.search(PacsQuery(pacs.url, description="*benign*"))
    assert {hit.label for hit in described} == {"benign"} and len(described) == 5
    chosen = [uid for uid, label in pacs_server.study_labels.items() if label == "normal"][:2]
    listed = pacs.search(study_uids=chosen)
    assert len(listed) == 2 and {hit.label for hit in listed} == {"normal"}
    picked = pacs.search(PacsQuery(pacs.url, picks=(listed[0].token,)))
    assert [hit.token for hit in picked] == [listed[0].token]
    series = pacs.series(listed[0])
    assert series and all(item.label == "normal" for item in series)
    _assert_private(
        [
            repr(ct),
            format_studies(ct),
            repr(series),
            *(item.title() for item in series),
            json.dumps([hit.row() for hit in ct]),
            repr(pacs),
        ],
        pacs_server,
    )


def test_a_labelled_collection_splits_by_patient_and_no_identifier_gets_out(
    pacs_server: Loaded,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("LUNGLAB_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)
    query = PacsQuery(pacs_server.server.dicomweb, modality="CT", date_from="20240101", date_to="20241231")
    spec = DataSpec(source=query.to_source(), image_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(spec, credentials=LOGIN)
        split = split_dataset(ds, seed=0, val_fraction=0.25, test_fraction=0.25)
        leaks = leakage_report(ds, split)
        monkeypatch.setenv(ENV_USER, USER)
        monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
        assert (
            main(["pacs", "search", pacs_server.server.dicomweb, "--modality", "CT", "--timeout", "20"]) == 0
        )
        again = load_dataset(spec)  # the environment's login, as a background job gets it
    printed = capsys.readouterr()
    assert ds.studies is not None
    assert ds.studies.counts() == {
        "patients": pacs_server.patients,
        "studies": 15,
        "series": 18,
        "slices": sum(pacs_server.slices.values()),
    }
    assert ds.class_counts() == pacs_server.slices
    assert any("1 series left out" in note and "name no single class" in note for note in ds.report.notes)
    assert split.report["studies"]["patients_on_two_sides"] == 0 and leaks["patients_on_two_sides"] == 0
    assert all(len(getattr(split, side)) for side in ("train", "val", "test"))
    assert again.fingerprint == ds.fingerprint and not ds.is_synthetic
    assert "16 studies found" in printed.out and "Chest CT - malignant" in printed.out
    assert "--data 'dicomweb:" in printed.out
    files = [
        path.read_bytes().decode("latin-1") for path in (tmp_path / "cache").rglob("*") if path.is_file()
    ]
    texts = [
        json.dumps(ds.report.to_dict()),
        repr(ds),
        ds.name,
        ds.source,
        json.dumps(spec.to_dict()),
        json.dumps(split.to_dict()),
        json.dumps(leaks),
        json.dumps(ds.studies.to_dict()),
        printed.out,
        printed.err,
        *[record.getMessage() for record in caplog.records],
        *[str(item.message) for item in caught],
        *files,
    ]
    _assert_private(texts, pacs_server)


def test_a_label_file_names_the_studies_and_their_classes(pacs_server: Loaded, tmp_path: Path) -> None:
    chosen = {}
    for uid, label in pacs_server.study_labels.items():
        chosen.setdefault(label, uid)
    labels = tmp_path / "labels.csv"
    # the file may relabel: the benign study is called malignant here, and the file wins over descriptions
    flipped = {"benign": "malignant", "malignant": "benign", "normal": "normal"}
    labels.write_text("uid,label\n" + "".join(f"{uid},{flipped[label]}\n" for label, uid in chosen.items()))
    spec = DataSpec(
        source=PacsQuery(pacs_server.server.dicomweb, labels=str(labels)).to_source(), image_size=32
    )
    ds = load_dataset(spec, credentials=LOGIN)
    assert ds.studies is not None and ds.studies.counts()["studies"] == 3
    assert set(ds.class_counts()) == {"benign", "malignant", "normal"} and min(ds.class_counts().values()) > 0
    # a row may name a series (its study is found on the server); only that series is then used
    pacs = Pacs(pacs_server.server.dicomweb, LOGIN)
    (study,) = pacs.search(study_uids=[chosen["normal"]])
    series = pacs.series(study)[0]
    labels.write_text(f"{series.uid},benign\n")
    one = load_dataset(spec, credentials=LOGIN)
    assert one.class_counts() == {"benign": series.instances, "malignant": 0, "normal": 0}
    labels.write_text(f"{next(iter(chosen.values()))},pneumonia\n")
    with pytest.raises(PacsError, match="line 1 of the label file names the class 'pneumonia'"):
        load_dataset(spec, credentials=LOGIN)


def test_attack_a_retrieved_slice_and_store_it_back_as_a_new_derived_series(pacs_server: Loaded) -> None:
    pacs = Pacs(pacs_server.server.dicomweb, LOGIN)
    study = pacs.search(PacsQuery(pacs.url, description="*malignant*"))[0]
    series = pacs.series(study)[0]
    slices = pacs.slices(series)
    assert [item.rank for item in slices] == list(range(len(slices)))
    positions = [item.position for item in slices]
    assert None not in positions and positions == sorted(positions)
    original = pacs.retrieve_slice(slices[len(slices) // 2])
    scan = open_scan(original)
    x = torch.from_numpy(preprocess_image(scan.image, 32)).float().div(255.0)[None, None]
    with one_thread():
        model = trained_model().model
        x_adv = get_attack("fgsm", eps=8 / 255)(model, x, torch.tensor([1]))
    attacked = (x_adv[0, 0] * 255).round().to(torch.uint8).numpy()
    assert not np.array_equal(attacked, (x[0, 0] * 255).round().to(torch.uint8).numpy())
    before_series = len(pacs.series(study))
    before = {hashlib.sha256(data).hexdigest() for data in pacs.retrieve_series(series)}
    stored = pacs.store_derived(original, attacked, method="FGSM 8/255")
    assert stored.instances == 1 and stored.description == ATTACKED_DESCRIPTION
    after = pacs.series(study)
    assert len(after) == before_series + 1
    new = [item for item in after if item.uid == stored.series_uid]
    assert len(new) == 1 and new[0].description == ATTACKED_DESCRIPTION and new[0].uid != series.uid
    (derived,) = pacs.retrieve_series(new[0])
    ds = pydicom.dcmread(io.BytesIO(derived))
    source = pydicom.dcmread(io.BytesIO(original))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SOPInstanceUID != source.SOPInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID  # filed in the original's study for the viewer
    assert "NOT FOR DIAGNOSIS" in ds.DerivationDescription and "not for diagnosis" in ds.SeriesDescription
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(open_scan(derived).image, attacked)  # reads back as the attacked pixels
    assert {
        hashlib.sha256(data).hexdigest() for data in pacs.retrieve_series(series)
    } == before  # original untouched
    assert len(pacs.slices(series)) == len(slices)


def test_a_wrong_password_is_refused_with_a_clear_message(pacs_server: Loaded) -> None:
    wrong = Credentials(USER, "not-the-password-xyz")
    with pytest.raises(PacsError, match=r"refused the login \(HTTP 401\).*user name and password") as caught:
        Pacs(pacs_server.server.dicomweb, wrong).search()
    assert "not-the-password-xyz" not in str(caught.value) and caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    with pytest.raises(PacsError, match="HTTP 401"):
        Pacs(pacs_server.server.dicomweb).search()  # no login at all
    with pytest.raises(PacsError, match="HTTP 404"):
        Pacs(pacs_server.server.root + "/no-such-root", LOGIN).search()
    remember_credentials(pacs_server.server.dicomweb, LOGIN)
    try:
        assert Pacs(pacs_server.server.dicomweb).search()  # remembered for this process only
    finally:
        remember_credentials(pacs_server.server.dicomweb, None)
    text = repr(LOGIN) + str(LOGIN)
    assert PASSWORD not in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(LOGIN)


def test_a_server_that_is_down_slow_or_not_dicomweb_gets_a_clear_message(tmp_path: Path) -> None:
    from tests.orthanc_server import free_port

    with pytest.raises(
        PacsError, match=r"cannot reach the PACS at http://127\.0\.0\.1:\d+/dicom-web .*running"
    ):
        Pacs(f"http://127.0.0.1:{free_port()}/dicom-web", LOGIN, timeout=5).search()
    for url in silent_server():
        with pytest.raises(PacsError, match=r"did not answer within 1 s while searching for studies"):
            Pacs(url, LOGIN, timeout=1).search()
    for url in web_page_server():
        with pytest.raises(PacsError, match="with something that is not DICOMweb") as caught:
            Pacs(url, LOGIN, timeout=5).search()
        assert "DICOMweb root" in str(caught.value)
        fake = SliceHit(0, None, None, f"{UID_ROOT}.1", f"{UID_ROOT}.2", f"{UID_ROOT}.3")
        with pytest.raises(PacsError, match="answered retrieving a slice with something that is not DICOM"):
            Pacs(url, LOGIN, timeout=5).retrieve_slice(fake)  # a web page where DICOM instances were expected
        spec = DataSpec(source=PacsQuery(url).to_source(), image_size=32)
        with pytest.raises(PacsError, match="not DICOMweb"):
            load_dataset(spec, credentials=LOGIN)
    with pytest.raises(PacsError, match="holds a user name or password"):
        DataSpec(source=f"dicomweb:http://{USER}:{PASSWORD}@127.0.0.1:1/dicom-web")
    assert main(["pacs", "search", f"http://127.0.0.1:{free_port()}/dicom-web", "--timeout", "5"]) == 2


def test_training_on_a_pacs_collection_records_no_identifier_and_a_job_gets_the_login(
    pacs_server: Loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import jobs
    from pipeline.training import TrainConfig, train
    from tests.dashboard_helpers import TINY

    monkeypatch.setenv("LUNGLAB_CACHE_DIR", str(tmp_path / "cache"))
    source = PacsQuery(pacs_server.server.dicomweb, modality="CT", date_from="20240101").to_source()
    remember_credentials(pacs_server.server.dicomweb, LOGIN)  # as the dashboard does for its session
    try:
        assert remembered_env() == {ENV_USER: USER, ENV_PASSWORD: PASSWORD}
        # an adversarial slice stored back into a labelled study is never trained on as a scan of its class
        pacs = Pacs(pacs_server.server.dicomweb)
        series = pacs.series(pacs.search(PacsQuery(pacs.url, description="*benign*"))[0])[0]
        original = pacs.retrieve_slice(pacs.slices(series)[0])
        pacs.store_derived(original, 255 - open_scan(original).image, method="a test")
        ds = load_dataset(DataSpec(source=source, image_size=32))
        assert ds.class_counts() == pacs_server.slices
        assert any("adversarial series stored back by this lab left out" in note for note in ds.report.notes)
        with one_thread():
            run_dir = train(
                TrainConfig.from_dict({**TINY, "data": source, "image_size": 32, "count": 12}),
                tmp_path / "runs",
            )
        # a background job (how the dashboard trains) logs in with the remembered login, from its environment
        job = tmp_path / "job"
        jobs.launch(job, ["pacs", "search", pacs_server.server.dicomweb, "--modality", "CT"])
        while jobs.job_state(job).running:  # a hang is pytest-timeout's to catch
            time.sleep(0.5)
        log = (job / jobs.LOG).read_text()
    finally:
        remember_credentials(pacs_server.server.dicomweb, None)
    assert "16 studies found" in log, log[-2000:]
    config = json.loads((run_dir / "config.json").read_text())
    written = [
        path.read_bytes().decode("latin-1")
        for path in [*run_dir.rglob("*"), *(tmp_path / "runs").rglob("*"), *job.rglob("*")]
        if path.is_file()
    ]
    assert any(source in text for text in written), "the run does not record its PACS source"
    assert config["data"]["source"] == source
    _assert_private(written, pacs_server)


def test_a_pacs_source_text_round_trips_and_refuses_what_it_must_not_hold() -> None:
    query = PacsQuery(
        "HTTPS://pacs.example:443/dicom-web/", modality="ct", date_from="2024-01-01", date_to="",
        description="Chest CT & lung*", labels="/data/my labels&x.csv", picks=("0123456789ABCDEF",),
    )
    source = query.to_source()
    assert source.startswith("dicomweb:https://pacs.example:443/dicom-web?modality=CT&")
    assert PacsQuery.from_source(source) == query and DataSpec(source=source).source == source
    assert PacsQuery.from_source(source).date_from == "20240101" and query.picks == ("0123456789abcdef",)
    for bad, message in (
        ("dicomweb:http://me:pw@pacs/dicom-web", "holds a user name or password"),
        ("dicomweb:ftp://pacs/dicom-web", "must start with http:// or https://"),
        ("dicomweb:http://pacs/dicom-web?date=2024", "YYYYMMDD-YYYYMMDD"),
        ("dicomweb:http://pacs/dicom-web?date=20241231-20240101", "after the last one"),
        ("dicomweb:http://pacs/dicom-web?patient=x", "unknown setting 'patient'"),
        ("dicomweb:http://pacs/dicom-web?pick=1.2.3", "16-digit hex token"),
        ("dicomweb:http://pacs/dicom-web?modality=C%20T", "short code"),
    ):
        with pytest.raises(PacsError, match=message) as caught:
            DataSpec(source=bad)
        assert "pw@" not in str(caught.value)


def test_labels_come_from_one_class_word_in_a_description() -> None:
    assert label_of("LUNG CT - Malignant") == "malignant"
    assert label_of("Bengin cases") == "benign"  # Kaggle's spelling
    assert label_of("", "Chest CT - normal") == "normal"  # the series says nothing: the study does
    assert label_of("abnormal findings") is None and label_of("benignity") is None  # whole words only
    assert label_of("benign vs malignant", "normal") is None  # two classes: not guessed
    assert label_of("follow-up", "") is None
