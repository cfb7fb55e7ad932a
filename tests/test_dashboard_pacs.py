"""The Data page's PACS section through Streamlit's AppTest, against a real Orthanc on loopback.

A user gives the server and login, searches, uses the studies found, and the page loads and
splits them by patient; a wrong password is a message on a page that stays usable. No patient
identifier, UID or password is shown anywhere on the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.ui.session import DATASET_KEY
from pipeline.data import DataSpec
from pipeline.data.dicom import ATTACKED_DESCRIPTION
from pipeline.data.dicomweb import Credentials, Pacs, PacsQuery, is_dicomweb_source, remember_credentials
from pipeline.training import TrainConfig, train
from tests.dashboard_helpers import TINY, run_until
from tests.dicom_studies import MARK, UID_ROOT
from tests.orthanc_server import PASSWORD, USER, Loaded, running_pacs

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    yield from running_pacs(tmp_path_factory)


def open_page(name: str, **state: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[DATASET_KEY] = DataSpec(image_size=32, count=36)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(f"views/{name}.py")
    return at.run()


def data_page() -> AppTest:
    return open_page("data")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tiny trained run (ResNet-18, 32 px phantoms, one epoch) for the Attack page."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUNGLAB_RUNS_DIR", str(folder))
        train(TrainConfig.from_dict({**TINY, "image_size": 32}), folder)
        yield folder


def shown(at: AppTest) -> str:
    return " ".join(str(getattr(element, "proto", "")) for root in (at.main, at.sidebar) for element in root)


def search(at: AppTest, server: Loaded, password: str, page: str = "data", description: str = "") -> AppTest:
    at.text_input(key=f"pacs:{page}:url").input(server.server.dicomweb)
    at.text_input(key=f"pacs:{page}:user").input(USER)
    at.text_input(key=f"pacs:{page}:password").input(password).run()
    at.text_input(key=f"pacs:{page}:modality").input("CT")
    at.text_input(key=f"pacs:{page}:from").input("2024-01-01")
    at.text_input(key=f"pacs:{page}:description").input(description)
    return at.button[[button.label for button in at.button].index("Search the PACS")].click().run()


@pytest.fixture(autouse=True)
def _forget_logins(pacs_server: Loaded, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("LUNGLAB_CACHE_DIR", str(tmp_path / "cache"))
    yield
    remember_credentials(pacs_server.server.dicomweb, None)


def test_the_data_page_searches_a_pacs_and_splits_its_studies_by_patient(pacs_server: Loaded) -> None:
    at = search(data_page(), pacs_server, PASSWORD)
    assert not at.exception and not at.error, [item.value for item in (*at.exception, *at.error)]
    use = [button for button in at.button if button.label.startswith("Use these")]
    assert [button.label for button in use] == ["Use these 16 studies"]
    use[0].click().run()
    choice = at.session_state[DATASET_KEY]
    assert (
        is_dicomweb_source(choice.source) and "modality=CT" in choice.source and PASSWORD not in choice.source
    )
    run_until(
        at,
        lambda at: any(item.value.startswith("**DICOM studies:**") for item in at.markdown) or bool(at.error),
    )
    assert not at.error, [item.value for item in at.error]
    assert any(
        item.value.startswith(f"**DICOM studies:** {pacs_server.patients} patients") for item in at.markdown
    )
    assert any("No patient is on two sides" in item.value for item in at.success)
    text = shown(at)
    for secret in [*pacs_server.identifiers, MARK, UID_ROOT, PASSWORD]:
        assert secret not in text, f"{secret!r} shown on the page"


def test_a_wrong_password_is_a_message_and_the_page_stays_usable(pacs_server: Loaded) -> None:
    at = search(data_page(), pacs_server, "wrong-password-123")
    assert not at.exception
    assert any("refused the login (HTTP 401)" in item.value for item in at.error), [
        item.value for item in at.error
    ]
    assert "wrong-password-123" not in shown(at)
    assert not [button for button in at.button if button.label.startswith("Use these")]
    assert at.session_state[DATASET_KEY] == DataSpec(
        image_size=32, count=36
    )  # the dataset choice is untouched
    assert any(item.value.startswith("**") for item in at.markdown)  # the current dataset is still drawn


def test_the_attack_page_attacks_a_pacs_slice_and_stores_it_back(pacs_server: Loaded, runs: Path) -> None:
    at = search(
        open_page("attack", **{"attack:source": "PACS"}), pacs_server, PASSWORD, "attack", "*malignant*"
    )
    assert not at.exception and not at.error, [item.value for item in (*at.exception, *at.error)]
    assert at.selectbox(key="pacs:attack:label").value == "malignant"  # from the study description
    assert any(
        "shown as the model sees it" in caption for image in at.get("image") for caption in image.captions
    )
    at.button(key="attack:run").click().run()
    run_until(
        at,
        lambda at: (
            "attack.task" not in at.session_state and ("attack.result" in at.session_state or bool(at.error))
        ),
    )
    assert not at.exception and not at.error, [item.value for item in (*at.exception, *at.error)]
    assert "Attacked scan (DICOM)" in {button.label for button in at.download_button}
    pacs = Pacs(pacs_server.server.dicomweb, Credentials(USER, PASSWORD))
    study = pacs.search(PacsQuery(pacs.url, description="*malignant*", date_from="20240101"))[0]
    before = pacs.series(study)
    store = [button for button in at.button if button.label == "Store in the PACS as a new series"]
    assert store, [button.label for button in at.button]
    store[0].click().run()
    assert not at.exception and not at.error, [item.value for item in (*at.exception, *at.error)]
    assert any(
        "as a new series" in item.value and "the original is unchanged" in item.value for item in at.success
    )
    after = pacs.series(study)
    assert len(after) == len(before) + 1
    assert [item.description for item in after if item.uid not in {old.uid for old in before}] == [
        ATTACKED_DESCRIPTION
    ]
    text = shown(at)
    for secret in [*pacs_server.identifiers, MARK, UID_ROOT, PASSWORD]:
        assert secret not in text, f"{secret!r} shown on the page"
